/**
 * The Service Bus entities of the example. The embedded emulator is started with exactly these;
 * `azure-setup.sh` creates the same ones in a real namespace.
 */
import type { ServiceBusEmulator } from "../../src/emulator/index.js"

/** The topic the outbox publishes every booking event to. */
export const bookingEvents = "booking-events"

/** The subscription the booking processor reads: summaries, and notification commands. */
export const bookingProcessor = "booking-processor"

/** The queue of notification commands, read by the notification processor. */
export const notifications = "notifications"

// Duplicate detection on both entities that receive sends: the outbox and the idempotent parts
// of the processors rely on it to drop a message sent again after a crash or a lost answer.
// maxDeliveryCount is the processor's default maxAttempts, so a poisoned message is
// dead-lettered with the handler's error as its reason.
export const entities: ServiceBusEmulator.Options = {
  topics: [
    {
      name: bookingEvents,
      requiresDuplicateDetection: true,
      duplicateDetectionHistoryTimeWindow: "PT10M",
      subscriptions: [{ name: bookingProcessor, lockDuration: "PT30S", maxDeliveryCount: 10 }]
    }
  ],
  queues: [
    {
      name: notifications,
      requiresDuplicateDetection: true,
      duplicateDetectionHistoryTimeWindow: "PT10M",
      lockDuration: "PT30S",
      maxDeliveryCount: 10
    }
  ]
}
