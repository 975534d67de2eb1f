import { Equal, Predicate } from "effect"

// Structural equality for test assertions. `Equal.equals` alone is not enough: a
// `Schema.TaggedClass` instance compares its fields with `Equal.equals`, which compares plain
// arrays by reference, so two equal events with an array field would differ.
export const equals = (self: unknown, that: unknown): boolean => {
  if (Object.is(self, that)) return true
  if (!Predicate.isObject(self) || !Predicate.isObject(that)) return false
  if (Equal.isEqual(self) && Equal.isEqual(that) && Equal.equals(self, that)) return true
  if (self instanceof Date || that instanceof Date) {
    return self instanceof Date && that instanceof Date && Object.is(self.getTime(), that.getTime())
  }
  if (Array.isArray(self) || Array.isArray(that)) {
    return Array.isArray(self) && Array.isArray(that) && self.length === that.length &&
      self.every((value, index) => equals(value, that[index]))
  }
  if (Object.getPrototypeOf(self) !== Object.getPrototypeOf(that)) return false
  const keys = Object.keys(self)
  if (keys.length !== Object.keys(that).length) return false
  return keys.every((key) =>
    Object.prototype.hasOwnProperty.call(that, key) &&
    equals((self as Record<string, unknown>)[key], (that as Record<string, unknown>)[key])
  )
}

// A plain, JSON-like rendering of a value for failure messages and for the `actual` / `expected`
// of assertion errors (test runners diff those).
export const toPlain = (value: unknown): unknown => {
  if (value instanceof Date) return Number.isNaN(value.getTime()) ? "Invalid Date" : value.toISOString()
  if (Array.isArray(value)) return value.map(toPlain)
  if (Predicate.isObject(value) && !Predicate.isFunction(value)) {
    if (value instanceof Error && !Predicate.hasProperty(value, "_tag")) return `${value.name}: ${value.message}`
    const out: Record<string, unknown> = {}
    if (Predicate.hasProperty(value, "_tag")) out._tag = value._tag
    for (const [key, field] of Object.entries(value)) {
      if (key !== "_tag") out[key] = toPlain(field)
    }
    return out
  }
  if (typeof value === "bigint") return `${value}n`
  return value
}

// One line: `Tag {"field":...}` for tagged values, JSON otherwise.
export const show = (value: unknown): string => {
  const plain = toPlain(value)
  if (Predicate.isObject(plain) && !Array.isArray(plain) && "_tag" in plain) {
    const { _tag, ...fields } = plain as { readonly _tag: unknown }
    return `${String(_tag)} ${JSON.stringify(fields)}`
  }
  if (Array.isArray(value)) return `[${value.map(show).join(", ")}]`
  return JSON.stringify(plain) ?? String(plain)
}

// A numbered list, one value a line.
export const list = (values: ReadonlyArray<unknown>, indent = "  "): string =>
  values.length === 0
    ? `${indent}(none)`
    : values.map((value, index) => `${indent}${index + 1}. ${show(value)}`).join("\n")
