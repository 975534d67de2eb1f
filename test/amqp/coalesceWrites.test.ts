import { assert, describe, it } from "@effect/vitest"
import { Effect } from "effect"
import { Writable } from "node:stream"
import { coalesceWrites } from "../../src/internal/amqp/coalesceWrites.js"

// A connection shaped like rhea's: `output()` writes every pending frame to the socket at once.
const fakeConnection = () => {
  const calls: Array<number> = []
  const socket = new Writable({
    write(_chunk: Buffer, _encoding, callback) {
      calls.push(1)
      callback()
    },
    writev(chunks, callback) {
      calls.push(chunks.length)
      callback()
    }
  })
  const pending: Array<Buffer> = []
  const connection = {
    socket,
    output(this: { socket: Writable }) {
      for (const frame of pending.splice(0)) this.socket.write(frame)
    },
    frame(bytes: string) {
      pending.push(Buffer.from(bytes))
      this.output()
    }
  }
  return { connection, calls }
}

const nextTick = Effect.promise(() => new Promise<void>((resolve) => process.nextTick(resolve)))

describe("coalesceWrites", () => {
  it.effect("frames written in one tick go to the socket together, at the end of the tick", () =>
    Effect.gen(function*() {
      const { calls, connection } = fakeConnection()
      coalesceWrites(connection)
      coalesceWrites(connection)
      connection.frame("transfer")
      connection.frame("disposition")
      connection.frame("declare")
      assert.deepStrictEqual(calls, [], "nothing written before the tick ends")
      yield* nextTick
      assert.deepStrictEqual(calls, [3])
      // The next tick's frames are a new group.
      connection.frame("discharge")
      yield* nextTick
      assert.deepStrictEqual(calls, [3, 1])
    }))

  it.effect("without it, rhea's connection writes frame by frame", () =>
    Effect.gen(function*() {
      const { calls, connection } = fakeConnection()
      connection.frame("transfer")
      connection.frame("disposition")
      yield* nextTick
      assert.deepStrictEqual(calls, [1, 1])
    }))

  it.effect("a destroyed socket is left alone", () =>
    Effect.gen(function*() {
      const { calls, connection } = fakeConnection()
      coalesceWrites(connection)
      connection.socket.destroy()
      connection.frame("close")
      yield* nextTick
      assert.deepStrictEqual(calls, [])
    }))
})
