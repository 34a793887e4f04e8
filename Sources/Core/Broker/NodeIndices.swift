/// Which node of its cluster (0 = leader, the rank-0 host) each instance serves.
///
/// Capstan decides this, not the provider: a plugin launches a gang with one call and may
/// return its instances in any order, echo Capstan's tags or drop them (a cloud without
/// per-instance tags). The index is assigned once, when the launch is first recorded, and the
/// state store keeps it (``StateStore/record(_:clusterID:intentKey:)``): later descriptions
/// cannot change it.
public enum NodeIndices {
    /// Indices for `instances`, in the order given. An instance with a `wanted` index keeps it
    /// when that index is in `0..<nodes` and not already taken (by `taken`, or by an earlier
    /// instance of the list); every other instance takes the lowest free index, in order.
    /// Nil when the gang cannot be numbered: more instances than free indices.
    public static func assign(_ wanted: [Int?], nodes: Int, taken: Set<Int> = []) -> [Int]? {
        var used = taken
        var out: [Int?] = wanted.map { w in
            guard let w, (0..<nodes).contains(w), !used.contains(w) else { return nil }
            used.insert(w)
            return w
        }
        var free = (0..<nodes).filter { !used.contains($0) }.makeIterator()
        for k in out.indices where out[k] == nil {
            guard let n = free.next() else { return nil }
            out[k] = n
        }
        return out.map { $0! }
    }
}
