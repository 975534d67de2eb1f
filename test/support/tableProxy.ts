// A small HTTP proxy in front of Azurite that injects transient failures into chosen requests:
// error answers, connection resets and requests held past the client's timeout, before or after
// the request reaches the service (after: the write is committed but the client does not know it).
import { Effect } from "effect"
import type { Redacted } from "effect"
import type { IncomingMessage } from "node:http"
import { createServer, request as httpRequest } from "node:http"
import type { AddressInfo } from "node:net"
import { connectionStringFor } from "../../src/testing/Azurite.js"

export type Fault =
  /** Answer with an error status without forwarding. */
  | { readonly kind: "status"; readonly status: number; readonly code: string }
  /** Drop the connection without forwarding. */
  | { readonly kind: "reset" }
  /** Never answer, without forwarding. */
  | { readonly kind: "hang" }
  /** Forward (the service applies the request), then answer with an error status. */
  | { readonly kind: "statusAfter"; readonly status: number; readonly code: string }
  /** Forward, then drop the connection. */
  | { readonly kind: "resetAfter" }
  /** Forward, then never answer. */
  | { readonly kind: "hangAfter" }

export type Matcher = (request: IncomingMessage) => boolean

/** Picks a fault for a request, or none. */
export type Chooser = (request: IncomingMessage) => Fault | undefined

export const serverBusy = { kind: "status", status: 503, code: "ServerBusy" } as const satisfies Fault

export const isBatch: Matcher = (request) => request.method === "POST" && (request.url ?? "").includes("$batch")
export const isGet: Matcher = (request) => request.method === "GET"
/** An insert: a POST on the table, not a batch. */
export const isInsert: Matcher = (request) => request.method === "POST" && !(request.url ?? "").includes("$batch")
/** A replace or an upsert: a PUT on an entity's URL. */
export const isReplace: Matcher = (request) => request.method === "PUT" && (request.url ?? "").includes("(")

export interface TableProxy {
  readonly connectionString: Redacted.Redacted<string>
  /** Queues faults for the next requests the matcher accepts, one fault per request. */
  readonly inject: (matcher: Matcher, ...faults: ReadonlyArray<Fault>) => void
  /** Every request seen, as "METHOD fault-or-ok". */
  readonly log: Array<string>
  /** The faults injected so far, as "METHOD fault". */
  readonly faults: Array<string>
  /**
   * Decides a fault for each request that no queued fault matches (a chaos run's random faults);
   * `undefined` turns it off.
   */
  readonly setChooser: (chooser: Chooser | undefined) => void
}

export interface ProxyOptions {
  /** Keep every request in `log` (true by default; long runs turn it off). */
  readonly log?: boolean
}

const errorBody = (code: string) =>
  JSON.stringify({ "odata.error": { code, message: { lang: "en-US", value: `Injected ${code}.` } } })

/** A proxy to `tableEndpoint` (Azurite's), on 127.0.0.1, closed with the scope. */
export const startProxy = (tableEndpoint: string, options: ProxyOptions = {}) =>
  Effect.acquireRelease(
    Effect.async<TableProxy & { readonly close: () => void }>((resume) => {
      const target = new URL(tableEndpoint)
      const queued: Array<{ readonly matcher: Matcher; readonly fault: Fault }> = []
      const log: Array<string> = []
      const faults: Array<string> = []
      let chooser: Chooser | undefined

      const server = createServer((request, response) => {
        const index = queued.findIndex(({ matcher }) => matcher(request))
        const fault = index === -1 ? chooser?.(request) : queued.splice(index, 1)[0].fault
        if (options.log !== false) log.push(`${request.method} ${fault?.kind ?? "ok"}`)
        if (fault !== undefined) faults.push(`${request.method} ${fault.kind}`)
        const answerError = (status: number, code: string) => {
          response.writeHead(status, {
            "content-type": "application/json;odata=minimalmetadata;charset=utf-8",
            "x-ms-error-code": code
          })
          response.end(errorBody(code))
        }
        if (fault?.kind === "status") return answerError(fault.status, fault.code)
        if (fault?.kind === "reset") return request.socket.destroy()
        if (fault?.kind === "hang") return
        const upstream = httpRequest(
          {
            host: target.hostname,
            port: target.port,
            method: request.method,
            path: request.url,
            headers: { ...request.headers, host: target.host }
          },
          (answer) => {
            const chunks: Array<Buffer> = []
            answer.on("data", (chunk: Buffer) => chunks.push(chunk))
            answer.on("end", () => {
              if (fault?.kind === "statusAfter") return answerError(fault.status, fault.code)
              if (fault?.kind === "resetAfter") return request.socket.destroy()
              if (fault?.kind === "hangAfter") return
              response.writeHead(answer.statusCode ?? 502, answer.headers)
              response.end(Buffer.concat(chunks))
            })
          }
        )
        upstream.on("error", () => request.socket.destroy())
        request.pipe(upstream)
      })

      server.listen(0, "127.0.0.1", () => {
        const { port } = server.address() as AddressInfo
        resume(Effect.succeed({
          connectionString: connectionStringFor(`http://127.0.0.1:${port}${target.pathname}`),
          inject: (matcher, ...faultsToInject) => {
            for (const fault of faultsToInject) queued.push({ matcher, fault })
          },
          log,
          faults,
          setChooser: (next) => {
            chooser = next
          },
          close: () => {
            server.closeAllConnections()
            server.close()
          }
        }))
      })
    }),
    (proxy) => Effect.sync(proxy.close)
  )
