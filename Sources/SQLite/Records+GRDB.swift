public import CapstanCore
public import Foundation
public import GRDB

// The records' SQLite mapping: each is a GRDB record (Codable columns; nested values as JSON).

extension Cluster: FetchableRecord, PersistableRecord {
    public static var databaseTableName: String { "cluster" }
}

extension LaunchIntent: FetchableRecord, PersistableRecord {
    public static var databaseTableName: String { "intent" }
}

extension InstanceRecord: FetchableRecord, PersistableRecord {
    public static var databaseTableName: String { "instance" }
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
