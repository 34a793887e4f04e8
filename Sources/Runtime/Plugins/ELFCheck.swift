public import CapstanCore
public import Foundation

/// Checks an ELF file before `dlopen` sees it. glibc's loader maps segments without comparing
/// them to the file's size, so a truncated library crashes the host with SIGBUS inside `dlopen`;
/// a library for another CPU gives only a terse message. Both become clear errors here.
enum ELFCheck {
    /// Returns a description of what is wrong with the ELF image at `path`, or nil when it looks
    /// loadable. Non-ELF files are left to the caller's magic check.
    static func problem(path: String) -> String? {
        guard let handle = PluginFile.openForReading(path: path) else { return "it cannot be read" }
        defer { try? handle.close() }
        let size = (try? handle.seekToEnd()) ?? 0
        try? handle.seek(toOffset: 0)
        guard let header = try? handle.read(upToCount: 64), header.count >= 52 else {
            return "it is truncated (\(size) bytes, shorter than an ELF header)"
        }
        let bytes = [UInt8](header)
        guard bytes[0] == 0x7F, bytes[1] == 0x45, bytes[2] == 0x4C, bytes[3] == 0x46 else { return nil }
        let is64 = bytes[4] == 2
        guard bytes[5] == 1 else { return "it is a big-endian ELF image" }
        func u16(_ o: Int) -> UInt64 { UInt64(bytes[o]) | UInt64(bytes[o + 1]) << 8 }
        func u32(_ o: Int, _ b: [UInt8]) -> UInt64 { (0..<4).reduce(0) { $0 | UInt64(b[o + $1]) << (8 * $1) } }
        func u64(_ o: Int, _ b: [UInt8]) -> UInt64 { (0..<8).reduce(0) { $0 | UInt64(b[o + $1]) << (8 * $1) } }

        let type = u16(16)
        guard type == 3 else { return "it is an ELF \(type == 2 ? "executable" : "file of type \(type)"), not a shared library" }
        let machine = u16(18)
        #if arch(x86_64)
        let expected: UInt64 = 62, hostName = "x86_64"
        #elseif arch(arm64)
        let expected: UInt64 = 183, hostName = "aarch64"
        #else
        let expected: UInt64 = machine, hostName = "this CPU"
        #endif
        guard is64, machine == expected else {
            let names: [UInt64: String] = [3: "i386", 40: "arm", 62: "x86_64", 183: "aarch64", 243: "riscv"]
            return "it was built for \(names[machine] ?? "machine type \(machine)")\(is64 ? "" : " (32-bit)"), and this host is \(hostName)"
        }
        guard bytes.count >= 64 else { return "it is truncated (\(size) bytes)" }
        let phoff = u64(32, bytes), shoff = u64(40, bytes)
        let phentsize = u16(54), phnum = u16(56), shentsize = u16(58), shnum = u16(60)
        guard phoff + phentsize * phnum <= size, shoff + shentsize * shnum <= size else {
            return "it is truncated (\(size) bytes; its headers extend past the end)"
        }
        guard phentsize >= 56 else { return "its program headers are malformed" }
        try? handle.seek(toOffset: phoff)
        guard let table = try? handle.read(upToCount: Int(phentsize * phnum)) else { return "it cannot be read" }
        let ph = [UInt8](table)
        for i in 0..<Int(phnum) {
            let base = i * Int(phentsize)
            let pType = u32(base, ph)
            let offset = u64(base + 8, ph), filesz = u64(base + 32, ph)
            if pType == 1, offset + filesz > size {  // PT_LOAD
                return "it is truncated (\(size) bytes; a loadable segment needs \(offset + filesz))"
            }
        }
        return nil
    }
}
