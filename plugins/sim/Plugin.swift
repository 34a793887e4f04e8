// The `sim` plugin: SimulatedCloud exported through the C ABI. This file is the whole plugin —
// the template for a Swift plugin (see docs/writing-a-plugin.md).
public import CapstanPluginABI
import CapstanPluginKit
import CapstanTesting

@_cdecl("capstan_plugin_entry")
public func capstanPluginEntry() -> UnsafePointer<capstan_plugin> {
    CapstanPluginKit.export(SimulatedCloud.pluginDefinition)
}
