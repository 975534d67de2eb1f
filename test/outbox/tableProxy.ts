// Which requests of the outbox the fault tests aim at; the proxy is `test/support/tableProxy.ts`.
import type { Matcher } from "../support/tableProxy.js"

export { isGet as isQuery, serverBusy, startProxy } from "../support/tableProxy.js"

/** Writes of a stream's dispatched position row (`~outbox`). */
export const isPositionWrite: Matcher = (request) => {
  const url = decodeURIComponent(request.url ?? "")
  // An update is a PUT on the row's URL; the first write is an insert, a POST on the table.
  return (request.method === "PUT" && url.includes("~outbox")) || (request.method === "POST" && !url.includes("$batch"))
}
