/**
 * The chaos run: the order-booking app as several processes (`child.ts`: the API with the
 * outbox, the booking processor, the notification processor) on Azurite and the Service Bus
 * emulator, under a load of bookings, while a scheduler driven by the seed injects faults:
 * processes killed with SIGKILL and started again after a pause, AMQP connections dropped,
 * server-busy refusals, slow Service Bus answers, expired locks, handlers slower than their lock,
 * and 503s, timeouts and connection resets in front of Table Storage. Then the faults stop, the
 * system drains, and the invariants are checked and printed. Exit code 0 only when all hold.
 *
 *     npm run chaos -- --duration 60s --seed 7 [--mode atomic|idempotent]
 *
 * See docs/chaos.md.
 */
import { TableClient } from "@azure/data-tables"
import { Effect, Exit, Redacted, Scope } from "effect"
import type { ChildProcess } from "node:child_process"
import { spawn } from "node:child_process"
import { createWriteStream, mkdirSync } from "node:fs"
import type { WriteStream } from "node:fs"
import { createServer } from "node:net"
import { dirname, join, resolve } from "node:path"
import { fileURLToPath } from "node:url"
import { parseArgs } from "node:util"
import * as Entities from "../../examples/order-booking/entities.js"
import { ServiceBusEmulator } from "../../src/emulator/index.js"
import type * as MessageProcessor from "../../src/MessageProcessor.js"
import { startTables } from "../../src/testing/Azurite.js"
import type { Fault } from "../support/tableProxy.js"
import { startProxy } from "../support/tableProxy.js"
import * as Checker from "./checker.js"
import type { ChildMessage, ParentMessage } from "./child.js"
import * as Random from "./random.js"

const here = dirname(fileURLToPath(import.meta.url))
const childScript = join(here, "child.ts")

// ---------------------------------------------------------------------------------------------
// Arguments
// ---------------------------------------------------------------------------------------------

type FaultKind =
  | "process killed (SIGKILL)"
  | "AMQP connections dropped"
  | "Service Bus server-busy refusals"
  | "Service Bus answers delayed"
  | "message locks expired"
  | "slow handlers (longer than the lock)"
  | "storage fault bursts"

/** Short names, for `--skip-faults`. */
const faultNames: Readonly<Record<string, FaultKind>> = {
  kill: "process killed (SIGKILL)",
  "amqp-drop": "AMQP connections dropped",
  busy: "Service Bus server-busy refusals",
  delay: "Service Bus answers delayed",
  "lock-expiry": "message locks expired",
  slow: "slow handlers (longer than the lock)",
  "storage-burst": "storage fault bursts"
}

const usage = "Usage: npm run chaos -- [--duration 60s] [--seed N] [--mode atomic|idempotent] " +
  "[--drain-timeout 180s] [--concurrency 4] [--rate 20] [--logs DIR] [--skip-faults kill,amqp-drop,busy,delay,lock-expiry,slow,storage-burst]"

const parseDuration = (name: string, text: string): number => {
  const match = /^(\d+(?:\.\d+)?)(ms|s|m)?$/.exec(text.trim())
  if (match === null) throw new Error(`--${name} must be a duration such as 60s, 2m or 500ms, not "${text}"\n${usage}`)
  const value = Number(match[1])
  return match[2] === "ms" ? value : match[2] === "m" ? value * 60_000 : value * 1000
}

const args = (() => {
  const { values } = parseArgs({
    args: process.argv.slice(2),
    options: {
      duration: { type: "string", default: "60s" },
      seed: { type: "string", default: "1" },
      mode: { type: "string", default: "atomic" },
      "drain-timeout": { type: "string", default: "180s" },
      concurrency: { type: "string", default: "4" },
      rate: { type: "string", default: "20" },
      logs: { type: "string" },
      "skip-faults": { type: "string", default: "" }
    }
  })
  if (values.mode !== "atomic" && values.mode !== "idempotent") {
    throw new Error(`--mode must be atomic or idempotent, not "${values.mode}"\n${usage}`)
  }
  const concurrency = Number(values.concurrency)
  if (!Number.isInteger(concurrency) || concurrency < 1) {
    throw new Error(`--concurrency must be a whole number\n${usage}`)
  }
  const rate = Number(values.rate)
  if (!(rate > 0)) throw new Error(`--rate must be a positive number of commands per second\n${usage}`)
  const skipFaults = values["skip-faults"].split(",").map((name) => name.trim()).filter((name) => name !== "")
  for (const name of skipFaults) {
    if (!Object.hasOwn(faultNames, name)) {
      throw new Error(`--skip-faults: unknown fault "${name}"; known: ${Object.keys(faultNames).join(", ")}\n${usage}`)
    }
  }
  return {
    skipFaults: new Set(skipFaults.map((name) => faultNames[name]!)),
    durationMs: parseDuration("duration", values.duration),
    seed: values.seed,
    mode: values.mode,
    drainTimeoutMs: parseDuration("drain-timeout", values["drain-timeout"]),
    concurrency,
    rate,
    logs: resolve(values.logs ?? join(".tmp", "chaos", `seed-${values.seed}-${values.mode}`))
  }
})()

// Short locks, so that slow handlers and expired locks matter within a short run.
const lockMillis = 5_000
const entities: ServiceBusEmulator.Options = {
  topics: Entities.entities.topics?.map((topic) => ({
    ...topic,
    subscriptions: topic.subscriptions?.map((subscription) => ({ ...subscription, lockDuration: lockMillis }))
  })),
  queues: Entities.entities.queues?.map((queue) => ({ ...queue, lockDuration: lockMillis }))
}

const tables = { events: "bookingevents", projections: "bookingprojections", trace: "chaostrace" }

const sleep = (millis: number) => new Promise<void>((resume) => setTimeout(resume, millis))
const elapsed = (since: number) => `${((Date.now() - since) / 1000).toFixed(1)} s`

const freePort = () =>
  new Promise<number>((resume, reject) => {
    const server = createServer()
    server.on("error", reject)
    server.listen(0, "127.0.0.1", () => {
      const address = server.address()
      const port = typeof address === "object" && address !== null ? address.port : 0
      server.close(() => resume(port))
    })
  })

// ---------------------------------------------------------------------------------------------
// Children
// ---------------------------------------------------------------------------------------------

type Role = "api" | "booking" | "notification"
const roles: ReadonlyArray<Role> = ["api", "booking", "notification"]

const zeroStats: MessageProcessor.Stats = {
  received: 0,
  completed: 0,
  abandoned: 0,
  rescheduled: 0,
  deadLettered: 0,
  retries: 0,
  commitFailures: 0,
  inFlight: 0
}

const addStats = (a: MessageProcessor.Stats, b: MessageProcessor.Stats): MessageProcessor.Stats => ({
  received: a.received + b.received,
  completed: a.completed + b.completed,
  abandoned: a.abandoned + b.abandoned,
  rescheduled: a.rescheduled + b.rescheduled,
  deadLettered: a.deadLettered + b.deadLettered,
  retries: a.retries + b.retries,
  commitFailures: a.commitFailures + b.commitFailures,
  inFlight: 0
})

/** One role's process, started again whenever it dies. */
class Supervised {
  process: ChildProcess | undefined
  up = false
  starts = 0
  /** Exits nobody asked for, with their code. */
  readonly unexpectedExits: Array<string> = []
  slowed = 0
  private finished = zeroStats
  private current = zeroStats
  private killed = false
  private stopping = false
  private restartTimer: ReturnType<typeof setTimeout> | undefined
  private readonly log: WriteStream

  constructor(readonly role: Role, private readonly env: NodeJS.ProcessEnv, logs: string) {
    this.log = createWriteStream(join(logs, `${role}.log`), { flags: "a" })
  }

  get lastReported(): MessageProcessor.Stats {
    return this.current
  }

  get stats(): MessageProcessor.Stats {
    return addStats(this.finished, this.current)
  }

  /** Starts the process and resolves once it is ready (or has died trying: it is then started again). */
  start(): Promise<void> {
    this.restartTimer = undefined
    if (this.stopping || this.process !== undefined) return Promise.resolve()
    this.starts++
    this.killed = false
    const child = spawn(process.execPath, ["--import", "tsx", childScript], {
      env: this.env,
      stdio: ["ignore", "pipe", "pipe", "ipc"]
    })
    this.process = child
    this.log.write(`--- start ${this.starts} (pid ${child.pid}) at ${new Date().toISOString()}\n`)
    child.stderr?.on("data", (chunk: Buffer) => this.log.write(chunk))
    child.on("message", (message: ChildMessage) => {
      if (message.type === "stats") this.current = message.stats
      else if (message.type === "slowed") this.slowed++
    })
    return new Promise((resume) => {
      child.stdout?.on("data", (chunk: Buffer) => {
        this.log.write(chunk)
        if (!this.up && chunk.toString().includes("ready")) {
          this.up = true
          resume()
        }
      })
      child.on("exit", (code, signal) => {
        this.log.write(`--- exit ${code ?? signal} at ${new Date().toISOString()}\n`)
        const wasUp = this.up
        this.up = false
        this.process = undefined
        this.finished = addStats(this.finished, this.current)
        this.current = zeroStats
        if (!this.killed && !this.stopping) {
          this.unexpectedExits.push(`${wasUp ? "exited" : "failed to start"} with ${code ?? signal}`)
          this.scheduleRestart(500)
        }
        resume()
      })
    })
  }

  scheduleRestart(pauseMillis: number) {
    if (this.stopping || this.restartTimer !== undefined) return
    this.restartTimer = setTimeout(() => void this.start(), pauseMillis)
  }

  /** SIGKILL, then a start after the pause. False when it was not running. */
  kill(pauseMillis: number): boolean {
    if (this.process === undefined || !this.up) return false
    this.killed = true
    this.process.kill("SIGKILL")
    this.scheduleRestart(pauseMillis)
    return true
  }

  /** Starts it now if it is down (a restart pending or not), and waits until it is ready. */
  async ensureUp(): Promise<void> {
    while (!this.up && !this.stopping) {
      if (this.restartTimer !== undefined) {
        clearTimeout(this.restartTimer)
        this.restartTimer = undefined
      }
      if (this.process === undefined) await this.start()
      else await sleep(100)
    }
  }

  send(message: ParentMessage) {
    if (this.up && this.process?.connected === true) this.process.send(message)
  }

  /** SIGTERM (a graceful stop), SIGKILL after a while. */
  async stop(): Promise<void> {
    this.stopping = true
    if (this.restartTimer !== undefined) clearTimeout(this.restartTimer)
    const child = this.process
    if (child !== undefined) {
      const exited = new Promise<void>((resume) => child.once("exit", () => resume()))
      child.kill("SIGTERM")
      const timer = setTimeout(() => child.kill("SIGKILL"), 15_000)
      await exited
      clearTimeout(timer)
    }
    await new Promise<void>((resume) => this.log.end(resume))
  }
}

// ---------------------------------------------------------------------------------------------
// Load: bookings placed, then confirmed, cancelled, both, or confirmed twice
// ---------------------------------------------------------------------------------------------

interface LoadCounts {
  bookings: number
  commands: number
  accepted: number
  refused: number
  /** Attempts that got no answer, or a 5xx: tried again. */
  failedAttempts: number
}

type Step = "confirm" | "cancel"

const runLoad = (baseUrl: string, seed: string, concurrency: number, rate: number, stopped: AbortSignal) => {
  const counts: LoadCounts = { bookings: 0, commands: 0, accepted: 0, refused: 0, failedAttempts: 0 }
  const isRunning = () => !stopped.aborted
  // At most `rate` requests a second, retries included: the load is there to be checked, not to
  // saturate two cores, and the backlog to drain stays bounded.
  let nextSlot = 0
  const paced = () => {
    const now = Date.now()
    const wait = Math.max(0, nextSlot - now)
    nextSlot = Math.max(now, nextSlot) + 1000 / rate
    return sleep(wait)
  }
  let next = 0
  const day = 24 * 60 * 60 * 1000

  // A command until it gets an answer (2xx or 4xx), or the load stops.
  const command = async (path: string, body: unknown): Promise<number | undefined> => {
    while (isRunning()) {
      await paced()
      if (!isRunning()) break
      try {
        const response = await fetch(`${baseUrl}${path}`, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify(body),
          signal: AbortSignal.any([AbortSignal.timeout(10_000), stopped])
        })
        await response.text()
        if (response.status < 500) return response.status
      } catch {
        // Refused while the API is down, reset, or timed out: try again.
      }
      if (!isRunning()) break
      counts.failedAttempts++
      await sleep(200)
    }
    return undefined
  }

  const booking = async (index: number) => {
    const random = Random.make(`${seed}/booking/${index}`)
    const bookingId = `b${index}`
    const steps: ReadonlyArray<Step> = random.weighted<ReadonlyArray<Step>>([
      [["confirm"], 50],
      [["cancel"], 20],
      [["confirm", "cancel"], 15],
      [["confirm", "confirm"], 15]
    ])
    const checkIn = Date.UTC(2031, 0, 1) + random.int(0, 300) * day
    const plan: ReadonlyArray<readonly [string, unknown]> = [
      ["/bookings", {
        bookingId,
        roomId: `${random.int(100, 140)}`,
        capacity: 4,
        checkIn: new Date(checkIn).toISOString(),
        checkOut: new Date(checkIn + random.int(1, 5) * day).toISOString(),
        guests: random.bool() ? ["Ada Lovelace", "Charles Babbage"] : ["Grace Hopper"]
      }],
      ...steps.map((step) =>
        [`/bookings/${bookingId}/${step}`, step === "cancel" ? { reason: "plans changed" } : {}] as const
      )
    ]
    counts.bookings++
    for (const [index, [path, body]] of plan.entries()) {
      counts.commands++
      const status = await command(path, body)
      if (status === undefined) return
      // A place retried after its first attempt committed answers 409: it was accepted.
      if (status < 300 || (index === 0 && status === 409)) counts.accepted++
      else {
        counts.refused++
        if (index === 0) return
      }
    }
  }

  const worker = async () => {
    while (isRunning()) await booking(next++)
  }
  const done = Promise.all(Array.from({ length: concurrency }, worker))
  return { counts, done }
}

// ---------------------------------------------------------------------------------------------
// Faults
// ---------------------------------------------------------------------------------------------

const storageFaultName = (fault: string): string => {
  const kind = fault.split(" ")[1]
  switch (kind) {
    case "status":
      return "storage 503 (not applied)"
    case "statusAfter":
      return "storage 503 (applied)"
    case "reset":
      return "storage connection reset (not applied)"
    case "resetAfter":
      return "storage connection reset (applied)"
    case "hang":
      return "storage timeout (not applied)"
    default:
      return "storage timeout (applied)"
  }
}

const serverBusy: Fault = { kind: "status", status: 503, code: "ServerBusy" }
const serverBusyAfter: Fault = { kind: "statusAfter", status: 503, code: "ServerBusy" }

// ---------------------------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------------------------

interface Row {
  readonly name: string
  readonly value: string
  readonly expected: string
  readonly ok: boolean
}

const table = (rows: ReadonlyArray<Row>): string => {
  const header = { name: "INVARIANT", value: "VALUE", expected: "EXPECTED" }
  const widths = {
    name: Math.max(header.name.length, ...rows.map((row) => row.name.length)),
    value: Math.max(header.value.length, ...rows.map((row) => row.value.length)),
    expected: Math.max(header.expected.length, ...rows.map((row) => row.expected.length))
  }
  const line = (name: string, value: string, expected: string, ok: string) =>
    `  ${name.padEnd(widths.name)}  ${value.padStart(widths.value)}  ${expected.padEnd(widths.expected)}  ${ok}`
  return [
    line(header.name, header.value, header.expected, "OK"),
    ...rows.map((row) => line(row.name, row.value, row.expected, row.ok ? "ok" : "FAILED"))
  ].join("\n")
}

const counted = (entries: ReadonlyMap<string, number>): string =>
  [...entries].map(([name, count]) => `  ${name.padEnd(50)} ${String(count).padStart(6)}`).join("\n")

const main = async (): Promise<number> => {
  const started = Date.now()
  mkdirSync(args.logs, { recursive: true })
  console.log(
    `Chaos run: seed ${args.seed}, ${args.mode} mode, ${args.durationMs / 1000} s of faults, ` +
      `locks of ${lockMillis / 1000} s${
        args.skipFaults.size === 0 ? "" : `, without: ${[...args.skipFaults].join(", ")}`
      }; child logs in ${args.logs}`
  )

  const azurite = await startTables()
  const emulator = await ServiceBusEmulator.start(entities)
  const scope = Effect.runSync(Scope.make())
  const proxy = await Effect.runPromise(Scope.extend(startProxy(azurite.tableEndpoint, { log: false }), scope))
  const cleanup = async () => {
    await Effect.runPromise(Scope.close(scope, Exit.void))
    await emulator.close()
    await azurite.close()
  }

  const direct = (name: string) =>
    TableClient.fromConnectionString(Redacted.value(azurite.connectionString), name, { allowInsecureConnection: true })
  const eventsTable = direct(tables.events)
  const traceTable = direct(tables.trace)
  await traceTable.createTable()

  const port = await freePort()
  const baseEnv: NodeJS.ProcessEnv = {}
  for (const [name, value] of Object.entries(process.env)) {
    if (!name.startsWith("AZURE_") && !name.startsWith("SERVICEBUS_")) baseEnv[name] = value
  }
  const children = new Map<Role, Supervised>(roles.map((role) => [
    role,
    new Supervised(role, {
      ...baseEnv,
      CHAOS_ROLE: role,
      CHAOS_MODE: args.mode,
      CHAOS_PORT: String(port),
      AZURE_STORAGE_CONNECTION_STRING: Redacted.value(proxy.connectionString),
      SERVICEBUS_CONNECTION_STRING: Redacted.value(emulator.connectionString),
      EVENT_STORE_TABLE: tables.events,
      PROJECTION_TABLE: tables.projections,
      CHAOS_TRACE_CONNECTION_STRING: Redacted.value(azurite.connectionString),
      CHAOS_TRACE_TABLE: tables.trace
    }, args.logs)
  ]))
  const child = (role: Role) => children.get(role)!

  let exitCode = 1
  try {
    // The API first: it creates the tables.
    await child("api").start()
    await Promise.all([child("booking").start(), child("notification").start()])
    await Promise.all(roles.map((role) => child(role).ensureUp()))
    console.log(`Started in ${elapsed(started)}: api (HTTP API and outbox), booking and notification processors`)

    // Storage faults: a low rate all along, bursts now and then.
    const storageRandom = Random.make(args.seed).fork("storage")
    let storageRate = 0.02
    proxy.setChooser(() =>
      storageRandom.next() < storageRate
        ? storageRandom.weighted<Fault>([
          [serverBusy, 4],
          [serverBusyAfter, 2],
          [{ kind: "reset" }, 2],
          [{ kind: "resetAfter" }, 1],
          [{ kind: "hang" }, 1],
          [{ kind: "hangAfter" }, 1]
        ])
        : undefined
    )

    const faultsStart = Date.now()
    const faults = new Map<string, number>()
    const count = (kind: string, by = 1) => faults.set(kind, (faults.get(kind) ?? 0) + by)
    // The schedule as it happened, for a look at a failed run next to the processes' logs.
    const schedule = createWriteStream(join(args.logs, "faults.log"))
    const logFault = (text: string) =>
      schedule.write(`${new Date().toISOString()} +${((Date.now() - faultsStart) / 1000).toFixed(1)}s ${text}\n`)
    const killed = new Map<Role, number>()

    const stopLoad = new AbortController()
    const load = runLoad(`http://127.0.0.1:${port}`, args.seed, args.concurrency, args.rate, stopLoad.signal)

    const random = Random.make(args.seed).fork("faults")
    const subscriptionPath = Checker.subscriptionPath
    let planned = 0
    while (Date.now() - faultsStart < args.durationMs) {
      await sleep(random.int(250, 1500))
      if (Date.now() - faultsStart >= args.durationMs) break
      planned++
      const kind = random.weighted<FaultKind>([
        ["process killed (SIGKILL)", 20],
        ["AMQP connections dropped", 12],
        ["Service Bus server-busy refusals", 15],
        ["Service Bus answers delayed", 8],
        ["message locks expired", 15],
        ["slow handlers (longer than the lock)", 15],
        ["storage fault bursts", 10]
      ])
      if (args.skipFaults.has(kind)) {
        logFault(`${kind}: skipped (--skip-faults)`)
        continue
      }
      switch (kind) {
        case "process killed (SIGKILL)": {
          const role = random.pick(roles)
          const pause = random.int(200, 3000)
          const done = child(role).kill(pause)
          logFault(`kill ${role} (restart after ${pause} ms)${done ? "" : ": not running, skipped"}`)
          if (done) {
            count(kind)
            killed.set(role, (killed.get(role) ?? 0) + 1)
          }
          break
        }
        case "AMQP connections dropped": {
          const abrupt = random.bool()
          const closed = await Effect.runPromise(emulator.faults.closeConnections({ abrupt }))
          logFault(`close AMQP connections${abrupt ? " abruptly" : ""}: ${closed}`)
          count(kind, closed)
          break
        }
        case "Service Bus server-busy refusals": {
          const refusals = random.int(1, 4)
          await Effect.runPromise(emulator.faults.refuseNext(refusals))
          logFault(`refuse the next ${refusals} operations (server busy)`)
          count(kind, refusals)
          break
        }
        case "Service Bus answers delayed": {
          const millis = random.int(200, 2000)
          const times = random.int(1, 8)
          await Effect.runPromise(emulator.faults.delay(millis, { count: times }))
          logFault(`delay the next ${times} operations by ${millis} ms`)
          count(kind, times)
          break
        }
        case "message locks expired": {
          const entity = random.pick([subscriptionPath, Checker.queuePath])
          const expired = await Effect.runPromise(emulator.faults.expireLocks(entity))
          logFault(`expire the locks on ${entity}: ${expired}`)
          count(kind, expired)
          break
        }
        case "slow handlers (longer than the lock)": {
          const role = random.pick<Role>(["booking", "notification"])
          const handlers = random.int(1, 3)
          const millis = random.int(lockMillis + 1_000, 2 * lockMillis + 1_000)
          child(role).send({ type: "slow", count: handlers, millis })
          logFault(`slow the next ${handlers} handlers of ${role} to ${millis} ms`)
          break
        }
        case "storage fault bursts": {
          const millis = random.int(1000, 3000)
          storageRate = 0.3
          logFault(`storage faults at 30% for ${millis} ms`)
          count(kind)
          setTimeout(() => (storageRate = 0.02), millis)
          break
        }
      }
    }

    // Faults stop; the load stops; every process runs again.
    const faultsStopped = Date.now()
    logFault("faults stop")
    schedule.end()
    stopLoad.abort()
    proxy.setChooser(undefined)
    storageRate = 0
    await Effect.runPromise(emulator.faults.reset)
    for (const role of roles) child(role).send({ type: "slow", count: 0, millis: 0 })
    await load.done
    await Promise.all(roles.map((role) => child(role).ensureUp()))
    for (const role of roles) child(role).send({ type: "slow", count: 0, millis: 0 })
    console.log(
      `Faults stopped after ${((faultsStopped - faultsStart) / 1000).toFixed(1)} s (${planned} scheduled); ` +
        `${load.counts.bookings} bookings, ${load.counts.commands} commands sent; draining`
    )

    // Drained: nothing left to dispatch, nothing active, locked or scheduled, three times in a row.
    const drainStart = Date.now()
    let lastProgress = drainStart
    let quiet = 0
    let last: Checker.Backlog | undefined
    while (quiet < 3) {
      if (Date.now() - drainStart > args.drainTimeoutMs) {
        console.log(
          `FAILED: the system did not drain within ${args.drainTimeoutMs / 1000} s after the faults stopped: ${
            last === undefined ? "no answer" : Checker.describeBacklog(last)
          }`
        )
        for (const role of ["booking", "notification"] as const) {
          console.log(`  ${role} processor, as last reported: ${JSON.stringify(child(role).lastReported)}`)
        }
        return 2
      }
      await Promise.all(roles.map((role) => child(role).ensureUp()))
      last = await Checker.backlog(eventsTable, emulator).catch(() => undefined)
      quiet = last !== undefined && Checker.isDrained(last) ? quiet + 1 : 0
      // A slow drain says what it waits for, every ten seconds.
      if (quiet === 0 && Date.now() - lastProgress >= 10_000) {
        lastProgress = Date.now()
        console.log(
          `  still draining after ${elapsed(drainStart)}: ${
            last === undefined ? "no answer" : Checker.describeBacklog(last)
          }; booking ${JSON.stringify(child("booking").lastReported)}; notification ${
            JSON.stringify(child("notification").lastReported)
          }`
        )
      }
      await sleep(500)
    }
    console.log(`Drained in ${elapsed(drainStart)}`)

    const findings = await Checker.check({
      storage: azurite.connectionString,
      eventsTable,
      traceTable,
      tables,
      serviceBus: emulator.connectionString
    })

    for (const fault of proxy.faults) count(storageFaultName(fault))
    for (const role of roles) {
      const slowed = child(role).slowed
      if (slowed > 0) count("slow handlers (longer than the lock)", slowed)
    }
    const restarts = roles.reduce((sum, role) => sum + child(role).starts - 1, 0)
    const unexpected = roles.flatMap((role) => child(role).unexpectedExits.map((exit) => `${role} ${exit}`))

    const none = (name: string, count: number): Row => ({
      name,
      value: String(count),
      expected: "= 0",
      ok: count === 0
    })
    const rows: ReadonlyArray<Row> = [
      { name: "commands accepted", value: String(load.counts.accepted), expected: "> 0", ok: load.counts.accepted > 0 },
      { name: "events stored", value: String(findings.eventsStored), expected: "> 0", ok: findings.eventsStored > 0 },
      {
        name: "events dispatched (each at least once)",
        value: String(findings.eventsDispatched),
        expected: `= ${findings.eventsStored}`,
        ok: findings.eventsDispatched === findings.eventsStored && findings.streamsBehind.length === 0
      },
      {
        name: "events applied to summaries",
        value: String(findings.eventsApplied),
        expected: `= ${findings.eventsStored}`,
        ok: findings.eventsApplied === findings.eventsStored
      },
      none("messages whose effect happened more than once", findings.duplicateEffects.length),
      none("projection documents that differ from a fold", findings.projectionMismatches.length),
      none("messages completed without their sends", findings.missingNotifications.length),
      none("dead-lettered messages", findings.deadLetters.length),
      // Killed processes are started again; one that exits by itself (an error nothing caught)
      // is a bug, even if its restart hides it.
      none("processes that exited on their own", unexpected.length)
    ]
    const ok = rows.every((row) => row.ok)

    console.log("")
    console.log(table(rows))
    console.log("")
    console.log("Faults injected:")
    console.log(counted(faults))
    console.log(
      `  (processes killed: ${
        roles.map((role) => `${role} ${killed.get(role) ?? 0}`).join(", ")
      }; ${restarts} restarts)`
    )
    console.log("")
    const booking = child("booking").stats
    const notification = child("notification").stats
    console.log("Messages processed:")
    console.log(counted(
      new Map([
        ["booking events completed", booking.completed],
        ["booking events abandoned", booking.abandoned],
        ["notification commands completed", notification.completed],
        ["notification commands abandoned", notification.abandoned],
        ["in-process retries", booking.retries + notification.retries],
        ["failed commits", booking.commitFailures + notification.commitFailures],
        ["events applied (traced effects)", findings.effects.eventsApplied],
        ["notifications recorded (traced effects)", findings.effects.notificationsRecorded],
        ["notifications expected", findings.notificationsExpected],
        ["commands refused by the domain", load.counts.refused],
        ["command attempts without an answer or with a 5xx", load.counts.failedAttempts]
      ])
    ))
    console.log(
      "  (processor counts are what the processes reported before they stopped; a killed process loses its last half second)"
    )
    if (unexpected.length > 0) console.log(`Processes that exited on their own: ${unexpected.join("; ")}`)

    const details: Array<readonly [string, ReadonlyArray<string>]> = [
      ["Streams behind", findings.streamsBehind],
      ["Effects more than once", findings.duplicateEffects],
      ["Summaries that differ from their stream", findings.projectionMismatches],
      ["Notifications missing", findings.missingNotifications],
      ["Dead-lettered", findings.deadLetters.map((letter) => `${letter.entity} ${letter.subject}: ${letter.reason}`)]
    ]
    for (const [title, lines] of details) {
      if (lines.length === 0) continue
      console.log(`\n${title} (${lines.length}):`)
      for (const line of lines.slice(0, 20)) console.log(`  ${line}`)
      if (lines.length > 20) console.log(`  ... and ${lines.length - 20} more`)
    }

    console.log("")
    console.log(`${ok ? "PASSED" : "FAILED"}: seed ${args.seed}, ${args.mode} mode, in ${elapsed(started)}`)
    console.log(`CHAOS_RESULT ${
      JSON.stringify({
        seed: args.seed,
        mode: args.mode,
        ok,
        invariants: rows,
        faults: Object.fromEntries(faults),
        processed: { booking, notification },
        unexpectedExits: unexpected
      })
    }`)
    exitCode = ok ? 0 : 1
    return exitCode
  } finally {
    await Promise.all(roles.map((role) => child(role).stop()))
    await cleanup()
  }
}

main().then(
  (code) => process.exit(code),
  (error: unknown) => {
    console.error(error instanceof Error ? error.message : String(error))
    process.exit(2)
  }
)
