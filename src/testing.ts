/**
 * Test kit: decider specifications, property laws, and the embedded Azure servers.
 *
 * @since 0.1.0
 */

/**
 * Azurite's Table service in process, for tests and examples.
 *
 * @since 0.1.0
 */
export * as Azurite from "./testing/Azurite.js"
