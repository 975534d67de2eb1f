/**
 * Test kit: decider specifications, property laws, and the embedded Azure servers.
 *
 * @since 0.1.0
 */

/**
 * Given / when / then specifications of deciders.
 *
 * @since 0.1.0
 */
export * as DeciderSpec from "./testing/DeciderSpec.js"

/**
 * Property-based laws every decider should obey.
 *
 * @since 0.1.0
 */
export * as DeciderLaws from "./testing/DeciderLaws.js"

/**
 * Azurite's Table service in process, for tests and examples.
 *
 * @since 0.1.0
 */
export * as Azurite from "./testing/Azurite.js"

/**
 * The in-repo Azure Service Bus emulator (AMQP 1.0, with transactions), for tests and examples.
 *
 * @since 0.1.0
 */
export * as ServiceBusEmulator from "./emulator/ServiceBusEmulator.js"
