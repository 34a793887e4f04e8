public import CapstanCore
public import Foundation
public import GRDB

// What the control plane (`capstan serve`) keeps: API tokens (hashed), cluster autostop,
// and the fencing token of each job's controller.

extension APIToken: FetchableRecord, PersistableRecord {
    public static var databaseTableName: String { "apiToken" }
}

extension SQLiteStateStore {
    static func registerControlPlaneMigrations(_ m: inout DatabaseMigrator) {
        m.registerMigration("v5-control-plane") { db in
            try db.alter(table: "cluster") { t in t.add(column: "idleMinutes", .integer) }
            try db.alter(table: "job") { t in
                t.add(column: "controllerFence", .integer)
                t.add(column: "controllerHolder", .text)
            }
            try db.create(table: "apiToken") { t in
                t.primaryKey("id", .text)
                t.column("name", .text).notNull()
                t.column("hash", .text).notNull().unique()
                t.column("createdAt", .datetime).notNull()
                t.column("revokedAt", .datetime)
                t.column("lastUsedAt", .datetime)
            }
        }
    }

    // MARK: - API tokens

    public func insert(_ token: APIToken) async throws {
        try await write { db in
            if try APIToken.fetchOne(db, key: token.id) != nil {
                throw CapstanError(.invalidRequest, "A token with id '\(token.id)' already exists.", hint: "Token ids are generated; create it again.")
            }
            try token.insert(db)
        }
    }

    public func token(hash: String) async throws -> APIToken? {
        try await read { try APIToken.filter(Column("hash") == hash).fetchOne($0) }
    }

    public func tokens() async throws -> [APIToken] {
        try await read { try APIToken.order(Column("createdAt"), Column("id")).fetchAll($0) }
    }

    @discardableResult
    public func revokeToken(_ idOrName: String, at: Date) async throws -> APIToken? {
        try await write { db in
            var found = try APIToken.fetchOne(db, key: idOrName)
            if found == nil {
                let named = try APIToken.filter(Column("name") == idOrName && Column("revokedAt") == nil).fetchAll(db)
                if named.count > 1 {
                    throw CapstanError(.invalidRequest, "\(named.count) live tokens are named '\(idOrName)'.", hint: "Revoke one by its id (`capstan serve token list`).")
                }
                found = named.first
            }
            guard var token = found else { return nil }
            if token.revokedAt == nil {
                token.revokedAt = at
                try token.update(db)
            }
            return token
        }
    }

    public func touchToken(_ id: String, at: Date) async throws {
        try await write { db in
            try db.execute(sql: "UPDATE apiToken SET lastUsedAt = ? WHERE id = ?", arguments: [at, id])
        }
    }
}
