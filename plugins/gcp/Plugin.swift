// The `gcp` plugin: Compute Engine and Cloud Storage, exported through the C ABI.
public import CapstanPluginABI
import CapstanPluginKit

@_cdecl("capstan_plugin_entry")
public func capstanPluginEntry() -> UnsafePointer<capstan_plugin> {
    CapstanPluginKit.export(GCPPlugin.definition)
}
