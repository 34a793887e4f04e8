public import Foundation

/// Where a credential chain finds its keys, without reading them out: what `capstan check`
/// reports (environment variable names, file paths and sections; never a value).
public struct CredentialLookup: Sendable, Hashable, Codable {
    /// Where the credentials were found (`environment: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY`,
    /// `/home/me/.aws/credentials [training]`); nil when they were not.
    public var foundIn: String?
    /// Every place looked at, in order, each with what was (not) there.
    public var searched: [String]

    public init(foundIn: String?, searched: [String]) {
        self.foundIn = foundIn
        self.searched = searched
    }
}

extension AWSCredentialChain {
    /// Where ``credentials()`` would take its keys from, looked up the same way (environment,
    /// then the profile in the shared credentials file, then in the config file).
    public func lookup() -> CredentialLookup {
        var searched: [String] = []
        let id = environment["AWS_ACCESS_KEY_ID"].flatMap { $0.isEmpty ? nil : $0 }
        let secret = environment["AWS_SECRET_ACCESS_KEY"].flatMap { $0.isEmpty ? nil : $0 }
        let envPlace = "environment: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY"
        if profile != nil {
            searched.append("\(envPlace) (not used: a profile is named)")
        } else if id != nil, secret != nil {
            let place = envPlace + (environment["AWS_SESSION_TOKEN"].map { $0.isEmpty ? "" : ", AWS_SESSION_TOKEN" } ?? "")
            return CredentialLookup(foundIn: place, searched: [place])
        } else {
            searched.append("\(envPlace) (\(id == nil && secret == nil ? "not set" : id == nil ? "AWS_ACCESS_KEY_ID not set" : "AWS_SECRET_ACCESS_KEY not set"))")
        }
        let name = profileName
        for (file, section) in [(credentialsFile, name), (configFile, name == "default" ? "default" : "profile \(name)")] {
            let place = "\(file) [\(section)]"
            guard let text = try? String(contentsOfFile: file, encoding: .utf8) else {
                searched.append("\(place) (\(FileManager.default.fileExists(atPath: file) ? "unreadable" : "no such file"))")
                continue
            }
            guard let values = Self.parseINI(text)[section] else {
                searched.append("\(place) (no such section)")
                continue
            }
            if values["aws_access_key_id"] != nil, values["aws_secret_access_key"] != nil {
                searched.append(place)
                return CredentialLookup(foundIn: place, searched: searched)
            }
            searched.append("\(place) (no aws_access_key_id and aws_secret_access_key)")
        }
        return CredentialLookup(foundIn: nil, searched: searched)
    }
}
