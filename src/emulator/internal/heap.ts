/** A binary min-heap ordered by a numeric key. */
export class MinHeap<A> {
  private readonly items: Array<A> = []
  constructor(private readonly key: (a: A) => number) {}

  get size(): number {
    return this.items.length
  }

  push(item: A): void {
    const items = this.items
    items.push(item)
    let i = items.length - 1
    const k = this.key(item)
    while (i > 0) {
      const parent = (i - 1) >> 1
      if (this.key(items[parent]) <= k) break
      items[i] = items[parent]
      i = parent
    }
    items[i] = item
  }

  peek(): A | undefined {
    return this.items[0]
  }

  pop(): A | undefined {
    const items = this.items
    if (items.length === 0) return undefined
    const top = items[0]
    const last = items.pop()!
    if (items.length > 0) {
      let i = 0
      const k = this.key(last)
      const n = items.length
      for (;;) {
        const left = 2 * i + 1
        if (left >= n) break
        const right = left + 1
        const child = right < n && this.key(items[right]) < this.key(items[left]) ? right : left
        if (this.key(items[child]) >= k) break
        items[i] = items[child]
        i = child
      }
      items[i] = last
    }
    return top
  }
}
