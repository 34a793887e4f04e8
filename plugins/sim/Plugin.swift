// The `sim` plugin: SimulatedCloud exported through the C ABI. This file is the whole plugin —
// the template for a Swift plugin (see docs/writing-a-plugin.md).
import CapstanPluginABI
import CapstanProviders

@_cdecl("capstan_plugin_entry")
public func capstanPluginEntry() -> UnsafePointer<capstan_plugin> {
    CapstanPluginKit.export(SimulatedCloud.pluginDefinition)
}
