/**
 * rhea writes every frame to the socket as soon as it is encoded: one `write` system call (and,
 * with Nagle's algorithm off, one TCP segment) per frame. Corking the socket on the first frame
 * of a tick and uncorking it at the end of the tick sends the frames of that tick together with
 * one `writev`. Frames are never held longer than the current tick.
 */
const COALESCED = Symbol.for("effect-eventually/amqp/coalesced-writes")

interface Corkable {
  readonly cork: () => void
  readonly uncork: () => void
  readonly writableCorked?: number
  readonly destroyed?: boolean
}

const isCorkable = (socket: unknown): socket is Corkable =>
  typeof socket === "object" && socket !== null && typeof (socket as Corkable).cork === "function" &&
  typeof (socket as Corkable).uncork === "function"

/**
 * Makes `connection` write the frames of one tick together. Idempotent; a connection whose
 * shape is not the expected one is left as it is (writes then go out frame by frame).
 */
export const coalesceWrites = (connection: object): void => {
  const target = connection as Record<PropertyKey, unknown>
  if (target[COALESCED] === true) return
  const output = target.output
  if (typeof output !== "function") return
  let corked: Corkable | undefined
  const uncork = () => {
    const socket = corked
    corked = undefined
    if (socket !== undefined && socket.destroyed !== true) socket.uncork()
  }
  target.output = function(this: Record<PropertyKey, unknown>) {
    const socket = this.socket
    if (corked === undefined && isCorkable(socket) && socket.destroyed !== true) {
      corked = socket
      socket.cork()
      process.nextTick(uncork)
    }
    return (output as () => unknown).call(this)
  }
  Object.defineProperty(target, COALESCED, { value: true })
}
