import CapstanCore
import CapstanStorage
import CapstanTestSupport
@testable import CapstanTrainer
import Foundation
import Synchronization
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// The source cache's keys for `file://` inputs (a folder on the node with no recorded
/// checksums): never a stale copy of a file rewritten with the same size and times.
@Suite("Inputs: the source cache's keys for file:// folders")
struct InputCacheTests {
    /// Fetches `dir` through the cache as InputFetch does; returns the cached `a.bin`'s bytes and
    /// whether it was a cache hit.
    func fetch(_ cache: SourceCache, _ dir: String) async throws -> (String, Bool) {
        let store = try FileObjectStore(root: dir, create: false)
        let said = Mutex<[String]>([])
        let (folder, files) = try await cache.bucket(store, prefix: "", location: "file://\(dir)/", localRoot: dir, say: { line in said.withLock { $0.append(line) } })
        #expect(files == ["a.bin"])
        let text = try String(contentsOfFile: folder + "/a.bin", encoding: .utf8)
        return (text, said.withLock { $0.contains { $0.contains("cached in") } })
    }

    /// Sets `path`'s access and modification times to `times` (nanoseconds kept).
    func setTimes(_ path: String, _ times: [timespec]) {
        var t = times
        #expect(utimensat(AT_FDCWD, path, &t, 0) == 0)
    }

    func times(_ path: String) -> [timespec] {
        var st = stat()
        #expect(stat(path, &st) == 0)
        return [st.st_atim, st.st_mtim]
    }

    @Test("a file rewritten in place with the same size and its old modification time (down to the nanosecond) is fetched again, not served from the cache")
    func sameSizeSameTime() async throws {
        let dir = TempDir("capstan-input-cache")
        defer { SourceCache.removeTree(dir.file("cache")); dir.cleanup() }
        let data = dir.file("data")
        let file = dir.write("data/a.bin", "version-1")
        let cache = SourceCache(root: dir.file("cache"))
        #expect(try await fetch(cache, data) == ("version-1", false))
        #expect(try await fetch(cache, data) == ("version-1", true), "unchanged: a cache hit")
        // Rewritten in place (same inode, same size) and its times put back: only the bytes differ.
        let before = times(file)
        let fd = open(file, O_WRONLY)
        #expect(fd >= 0)
        #expect(pwrite(fd, "version-2", 9, 0) == 9)
        close(fd)
        setTimes(file, before)
        #expect(times(file)[1].tv_nsec == before[1].tv_nsec && times(file)[1].tv_sec == before[1].tv_sec)
        #expect(try await fetch(cache, data) == ("version-2", false))
        #expect(try await fetch(cache, data) == ("version-2", true))
    }

    @Test("a settled file's hash is remembered by its device, inode, size and times in nanoseconds: the same status is not read again; a replacement of the same size and modification time is read and is a new entry")
    func settledStatus() async throws {
        let dir = TempDir("capstan-input-cache")
        defer { SourceCache.removeTree(dir.file("cache")); dir.cleanup() }
        let data = dir.file("data")
        let file = dir.write("data/a.bin", "version-1")
        var cache = SourceCache(root: dir.file("cache"))
        cache.settleSeconds = 0  // every file counts as settled: keyed by its status alone
        #expect(try await fetch(cache, data) == ("version-1", false))
        #expect(try await fetch(cache, data) == ("version-1", true))
        #expect(try cache.localKey(file, now: Date()) == .content(CheckpointStore.hashFile(file).1))
        // A settled file's hash is remembered by its status: a look with the same status does
        // not read the file (a planted memo is believed).
        let memos = dir.file("cache/local-hashes")
        let names = (try? FileManager.default.contentsOfDirectory(atPath: memos)) ?? []
        #expect(names.count == 1, "\(names)")
        let planted = String(repeating: "ab", count: 32)
        for n in names { try Data(planted.utf8).write(to: URL(fileURLWithPath: memos + "/" + n)) }
        #expect(try cache.localKey(file, now: Date()) == .content(planted))
        // Replaced by rename (a new inode), with the same size and modification time.
        let before = times(file)
        let next = dir.write("data-next.bin", "version-2")
        setTimes(next, before)
        #expect(rename(next, file) == 0)
        #expect(try await fetch(cache, data) == ("version-2", false))
        // A file changed just now is read and hashed, whatever is remembered.
        #expect(try SourceCache(root: dir.file("cache")).localKey(file, now: Date()) == .content(CheckpointStore.hashFile(file).1))
    }
}
