import CoreMetrics
import Prometheus

/// swift-metrics' factory for `capstan serve`: every metric lands in one
/// ``PrometheusCollectorRegistry``, with the `# HELP` text ``MetricHelp`` has for its name (the
/// stock `PrometheusMetricsFactory` registers an empty one), so `/metrics` lints clean.
struct HelpfulPrometheusFactory: MetricsFactory {
    let registry: PrometheusCollectorRegistry
    /// Bucket bounds by metric name; others get ``MetricHelp/defaultSeconds``.
    let durationBuckets: [String: [Duration]]

    func makeCounter(label: String, dimensions: [(String, String)]) -> any CounterHandler {
        registry.makeCounter(descriptor: MetricHelp.descriptor(label), labels: dimensions)
    }

    func makeFloatingPointCounter(label: String, dimensions: [(String, String)]) -> any FloatingPointCounterHandler {
        registry.makeCounter(descriptor: MetricHelp.descriptor(label), labels: dimensions)
    }

    func makeRecorder(label: String, dimensions: [(String, String)], aggregate: Bool) -> any RecorderHandler {
        guard aggregate else { return registry.makeGauge(descriptor: MetricHelp.descriptor(label), labels: dimensions) }
        return registry.makeValueHistogram(descriptor: MetricHelp.descriptor(label), labels: dimensions, buckets: MetricHelp.defaultSeconds.map { Double($0.components.seconds) + Double($0.components.attoseconds) / 1e18 })
    }

    func makeMeter(label: String, dimensions: [(String, String)]) -> any MeterHandler {
        registry.makeGauge(descriptor: MetricHelp.descriptor(label), labels: dimensions)
    }

    func makeTimer(label: String, dimensions: [(String, String)]) -> any TimerHandler {
        registry.makeDurationHistogram(descriptor: MetricHelp.descriptor(label), labels: dimensions, buckets: durationBuckets[label] ?? MetricHelp.defaultSeconds)
    }

    func destroyCounter(_ handler: any CounterHandler) {
        if let c = handler as? Prometheus.Counter { registry.unregisterCounter(c) }
    }

    func destroyFloatingPointCounter(_ handler: any FloatingPointCounterHandler) {
        if let c = handler as? Prometheus.Counter { registry.unregisterCounter(c) }
    }

    func destroyRecorder(_ handler: any RecorderHandler) {
        if let g = handler as? Prometheus.Gauge { registry.unregisterGauge(g) }
        if let h = handler as? ValueHistogram { registry.unregisterValueHistogram(h) }
    }

    func destroyMeter(_ handler: any MeterHandler) {
        if let g = handler as? Prometheus.Gauge { registry.unregisterGauge(g) }
    }

    func destroyTimer(_ handler: any TimerHandler) {
        if let h = handler as? DurationHistogram { registry.unregisterDurationHistogram(h) }
    }
}
