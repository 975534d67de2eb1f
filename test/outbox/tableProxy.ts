// A small HTTP proxy in front of Azurite that injects transient failures into chosen requests:
// an error answer without forwarding, or a forwarded request whose answer is lost.
import { Effect } from "effect"
import type { IncomingMessage } from "node:http"
import { createServer, request as httpRequest } from "node:http"
import type { AddressInfo } from "node:net"
import { connectionStringFor } from "../../src/testing/Azurite.js"

export type Fault =
  | { readonly kind: "status"; readonly status: number; readonly code: string }
  | { readonly kind: "resetAfter" }

export type Matcher = (request: IncomingMessage) => boolean

export const serverBusy: Fault = { kind: "status", status: 503, code: "ServerBusy" }

/** Writes of a stream's dispatched position row (`~outbox`). */
export const isPositionWrite: Matcher = (request) => {
  const url = decodeURIComponent(request.url ?? "")
  // An update is a PUT on the row's URL; the first write is an insert, a POST on the table.
  return (request.method === "PUT" && url.includes("~outbox")) || (request.method === "POST" && !url.includes("$batch"))
}

export const isQuery: Matcher = (request) => request.method === "GET"

export const startProxy = (tableEndpoint: string) =>
  Effect.acquireRelease(
    Effect.async<{
      readonly connectionString: ReturnType<typeof connectionStringFor>
      readonly inject: (matcher: Matcher, ...faults: ReadonlyArray<Fault>) => void
      readonly log: Array<string>
      readonly close: () => void
    }>((resume) => {
      const target = new URL(tableEndpoint)
      const queued: Array<{ readonly matcher: Matcher; readonly fault: Fault }> = []
      const log: Array<string> = []
      const server = createServer((request, response) => {
        const index = queued.findIndex(({ matcher }) => matcher(request))
        const fault = index === -1 ? undefined : queued.splice(index, 1)[0].fault
        if (fault !== undefined) log.push(`${request.method} ${fault.kind}`)
        if (fault?.kind === "status") {
          response.writeHead(fault.status, { "content-type": "application/json", "x-ms-error-code": fault.code })
          response.end(JSON.stringify({ "odata.error": { code: fault.code, message: { value: "Injected." } } }))
          return
        }
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
              if (fault?.kind === "resetAfter") return request.socket.destroy()
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
          inject: (matcher, ...faults) => {
            for (const fault of faults) queued.push({ matcher, fault })
          },
          log,
          close: () => {
            server.closeAllConnections()
            server.close()
          }
        }))
      })
    }),
    (proxy) => Effect.sync(proxy.close)
  )
