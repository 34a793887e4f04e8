/// What a plugin says about itself (its `manifest_json()`).
public struct PluginManifest: Sendable, Hashable, Codable {
    /// What a plugin provides.
    public struct Capability: Sendable, Hashable, Codable, CustomStringConvertible {
        public let name: String
        public init(_ name: String) { self.name = name }
        public static let compute = Capability("compute")
        public static let storage = Capability("storage")
        public var description: String { name }
        public init(from decoder: any Decoder) throws { name = try decoder.singleValueContainer().decode(String.self) }
        public func encode(to encoder: any Encoder) throws { var c = encoder.singleValueContainer(); try c.encode(name) }
    }

    public var name: String
    public var version: String
    public var description: String?
    public var capabilities: [Capability]
    /// JSON Schema of the object the plugin's `create` accepts (the `providers.<name>` section
    /// of the user config).
    public var configSchema: JSONValue?
    /// Ignored (read for compatibility). It asked to be used without a `providers.<name>`
    /// section in the config; reading it needs the plugin loaded, and a plugin is now loaded only
    /// when the config names it.
    public var autoEnable: Bool?
    /// URI schemes the plugin's object store serves (`s3`, `gs`).
    public var storageSchemes: [String]?
    /// How long its offers may be cached, in seconds (default 600; 0: never).
    public var offerCacheSeconds: Double?

    public init(
        name: String, version: String, description: String? = nil, capabilities: [Capability],
        configSchema: JSONValue? = nil, autoEnable: Bool? = nil, storageSchemes: [String]? = nil, offerCacheSeconds: Double? = nil
    ) {
        self.offerCacheSeconds = offerCacheSeconds
        self.name = name
        self.version = version
        self.description = description
        self.capabilities = capabilities
        self.configSchema = configSchema
        self.autoEnable = autoEnable
        self.storageSchemes = storageSchemes
    }
}
