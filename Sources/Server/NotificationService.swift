public import CapstanTrainer
public import ServiceLifecycle

/// `capstan serve`'s notification deliverer (docs/notifications.md): delivers the outbox
/// until graceful shutdown, then ends its claims; what is undelivered stays in the state
/// store for the next start or another replica.
public struct NotificationService: Service {
    public let deliverer: NotificationDeliverer

    public init(deliverer: NotificationDeliverer) { self.deliverer = deliverer }

    public func run() async throws {
        let deliverer = self.deliverer
        try? await cancelWhenGracefulShutdown { await deliverer.run() }
    }
}
