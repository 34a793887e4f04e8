public import CapstanCore
public import Foundation
public import GRDB

// The records' SQLite mapping: each is a GRDB record (Codable columns; nested values as JSON).

/// The decoder for the records' JSON columns: GRDB's default settings, made once. GRDB's
/// default makes a new `JSONDecoder` for every JSON column of every row read, which shows when
/// `status` reads 1,000 clusters and their instances. (`JSONDecoder` may decode on several
/// threads at once, as `PluginWire.decoder` does.)
enum RecordJSON {
    static let decoder: JSONDecoder = {
        let d = JSONDecoder()
        d.dataDecodingStrategy = .base64
        d.dateDecodingStrategy = .millisecondsSince1970
        d.nonConformingFloatDecodingStrategy = .throw
        return d
    }()
}

extension Cluster: FetchableRecord, PersistableRecord {
    public static var databaseTableName: String { "cluster" }
    public static func databaseJSONDecoder(for column: String) -> JSONDecoder { RecordJSON.decoder }
}

extension LaunchIntent: FetchableRecord, PersistableRecord {
    public static var databaseTableName: String { "intent" }
    public static func databaseJSONDecoder(for column: String) -> JSONDecoder { RecordJSON.decoder }
}

extension InstanceRecord: FetchableRecord, PersistableRecord {
    public static var databaseTableName: String { "instance" }
    public static func databaseJSONDecoder(for column: String) -> JSONDecoder { RecordJSON.decoder }
}

extension StateEvent: FetchableRecord, MutablePersistableRecord {
    public static var databaseTableName: String { "event" }
    public mutating func didInsert(_ inserted: InsertionSuccess) { id = inserted.rowID }
}

extension JobRecord: FetchableRecord, PersistableRecord {
    public static var databaseTableName: String { "job" }
}

extension JobAttemptRecord: FetchableRecord, PersistableRecord {
    public static var databaseTableName: String { "jobAttempt" }
}

extension CheckpointRecord: FetchableRecord, PersistableRecord {
    public static var databaseTableName: String { "checkpoint" }
}

/// One provider's answer to one request shape. `offers` is the JSON array of the offers, as
/// ``OfferJSON`` writes it (a row written by an older Capstan, by GRDB's JSONEncoder, reads the
/// same).
struct OfferCacheRecord: Codable, FetchableRecord, PersistableRecord {
    static let databaseTableName = "offerCache"
    var provider: String
    var requestKey: String
    var fetchedAt: Date
    var offers: String
}
