// The `runpod` plugin: RunPod pods through the GraphQL API, exported through the C ABI.
public import CapstanPluginABI
import CapstanPluginKit

@_cdecl("capstan_plugin_entry")
public func capstanPluginEntry() -> UnsafePointer<capstan_plugin> {
    CapstanPluginKit.export(RunPodPlugin.definition)
}
