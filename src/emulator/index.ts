/**
 * The Node-native Azure Service Bus emulator: an AMQP 1.0 server for the official SDK, with
 * transactions and fault injection.
 *
 * @since 0.1.0
 */

/**
 * Start, configure and control the emulator.
 *
 * @since 0.1.0
 */
export * as ServiceBusEmulator from "./ServiceBusEmulator.js"
