// The `aws` plugin: EC2 compute and S3 storage, exported through the C ABI.
public import CapstanPluginABI
import CapstanPluginKit
import CapstanAWS

@_cdecl("capstan_plugin_entry")
public func capstanPluginEntry() -> UnsafePointer<capstan_plugin> {
    CapstanPluginKit.export(AWSPlugin.definition)
}
