// Subscription rules: the `true` / `false` filters, correlation filters, and a subset of the
// SQL filter language (comparisons, AND / OR / NOT, IS [NOT] NULL, IN, LIKE, EXISTS) over
// `sys.*` system properties and `user.*` (or bare) application properties.
import type { AmqpValue } from "./codec.js"
import { AmqpSymbol, AmqpUuid } from "./codec.js"
import type { Envelope } from "./message.js"
import { idText } from "./message.js"

/** The values a filter sees. */
export interface FilterInput {
  readonly system: (name: string) => unknown
  readonly user: (name: string) => unknown
}

/** A compiled filter. */
export type Predicate = (input: FilterInput) => boolean

const plain = (value: AmqpValue | undefined): unknown => {
  if (value instanceof AmqpSymbol) return value.value
  if (value instanceof AmqpUuid) return value.toString()
  if (typeof value === "bigint") return Number(value)
  if (value instanceof Date) return value.getTime()
  return value
}

/** What filters read from a message. */
export const filterInput = (env: Envelope): FilterInput => ({
  system: (name) => {
    const p = env.properties
    switch (name.toLowerCase()) {
      case "messageid":
        return idText(p.messageId)
      case "correlationid":
        return idText(p.correlationId)
      case "to":
        return p.to
      case "replyto":
        return p.replyTo
      case "label":
      case "subject":
        return p.subject
      case "sessionid":
        return p.groupId
      case "replytosessionid":
        return p.replyToGroupId
      case "contenttype":
        return p.contentType
      default:
        return undefined
    }
  },
  user: (name) => {
    for (const e of env.appProperties) if (e.key === name) return plain(e.value)
    return undefined
  }
})

/** A correlation filter: every field given must match exactly. */
export interface CorrelationFilter {
  readonly correlationId?: string | undefined
  readonly messageId?: string | undefined
  readonly to?: string | undefined
  readonly replyTo?: string | undefined
  readonly subject?: string | undefined
  readonly label?: string | undefined
  readonly sessionId?: string | undefined
  readonly replyToSessionId?: string | undefined
  readonly contentType?: string | undefined
  readonly applicationProperties?: Readonly<Record<string, string | number | boolean>> | undefined
}

/** Compiles a correlation filter. */
export const correlation = (filter: CorrelationFilter): Predicate => {
  const system: Array<[string, string]> = []
  const add = (name: string, value: string | undefined) => {
    if (value !== undefined) system.push([name, value])
  }
  add("correlationid", filter.correlationId)
  add("messageid", filter.messageId)
  add("to", filter.to)
  add("replyto", filter.replyTo)
  add("label", filter.subject ?? filter.label)
  add("sessionid", filter.sessionId)
  add("replytosessionid", filter.replyToSessionId)
  add("contenttype", filter.contentType)
  const user = Object.entries(filter.applicationProperties ?? {})
  return (input) =>
    system.every(([name, value]) => input.system(name) === value) &&
    user.every(([name, value]) => input.user(name) === value)
}

/** Raised when a SQL filter does not parse. */
export class FilterSyntaxError extends Error {
  override readonly name = "FilterSyntaxError"
}

type Token =
  | { readonly kind: "ident"; readonly scope: "sys" | "user"; readonly name: string }
  | { readonly kind: "string"; readonly value: string }
  | { readonly kind: "number"; readonly value: number }
  | { readonly kind: "word"; readonly value: string }
  | { readonly kind: "op"; readonly value: string }

const tokenize = (text: string): Array<Token> => {
  const tokens: Array<Token> = []
  let i = 0
  while (i < text.length) {
    const c = text[i]
    if (/\s/.test(c)) {
      i++
    } else if (c === "'") {
      let value = ""
      i++
      for (;;) {
        if (i >= text.length) throw new FilterSyntaxError(`unterminated string in filter: ${text}`)
        if (text[i] === "'") {
          if (text[i + 1] === "'") {
            value += "'"
            i += 2
            continue
          }
          i++
          break
        }
        value += text[i++]
      }
      tokens.push({ kind: "string", value })
    } else if (/[0-9]/.test(c) || (c === "-" && /[0-9]/.test(text[i + 1] ?? "") && lastIsOperator(tokens))) {
      const match = /^-?[0-9]+(\.[0-9]+)?/.exec(text.slice(i))!
      tokens.push({ kind: "number", value: Number(match[0]) })
      i += match[0].length
    } else if (c === "[") {
      const end = text.indexOf("]", i)
      if (end < 0) throw new FilterSyntaxError(`unterminated [name] in filter: ${text}`)
      tokens.push({ kind: "ident", scope: "user", name: text.slice(i + 1, end) })
      i = end + 1
    } else if (/[A-Za-z_@$]/.test(c)) {
      const match = /^[A-Za-z_@$][A-Za-z0-9_@$]*(\.(\[[^\]]*\]|[A-Za-z_@$][A-Za-z0-9_@$]*))?/.exec(text.slice(i))!
      const word = match[0]
      i += word.length
      const dot = word.indexOf(".")
      const keyword = word.toUpperCase()
      if (dot > 0) {
        const scope = word.slice(0, dot).toLowerCase()
        let name = word.slice(dot + 1)
        if (name.startsWith("[")) name = name.slice(1, -1)
        if (scope !== "sys" && scope !== "user") {
          throw new FilterSyntaxError(`unknown property scope "${scope}" in filter: ${text}`)
        }
        tokens.push({ kind: "ident", scope, name })
      } else if (
        ["AND", "OR", "NOT", "IS", "NULL", "IN", "LIKE", "TRUE", "FALSE", "EXISTS", "ESCAPE"].includes(keyword)
      ) {
        tokens.push({ kind: "word", value: keyword })
      } else {
        tokens.push({ kind: "ident", scope: "user", name: word })
      }
    } else {
      const two = text.slice(i, i + 2)
      if (["<>", "!=", "<=", ">="].includes(two)) {
        tokens.push({ kind: "op", value: two === "!=" ? "<>" : two })
        i += 2
      } else if (["=", "<", ">", "(", ")", ","].includes(c)) {
        tokens.push({ kind: "op", value: c })
        i++
      } else {
        throw new FilterSyntaxError(`unexpected character "${c}" in filter: ${text}`)
      }
    }
  }
  return tokens
}

const lastIsOperator = (tokens: ReadonlyArray<Token>): boolean => {
  const last = tokens[tokens.length - 1]
  return last === undefined || last.kind === "op" || last.kind === "word"
}

type Expr = (input: FilterInput) => unknown

const compare = (op: string, a: unknown, b: unknown): boolean | null => {
  if (a === undefined || a === null || b === undefined || b === null) return null
  if (typeof a === "number" && typeof b === "number") {
    switch (op) {
      case "=":
        return a === b
      case "<>":
        return a !== b
      case "<":
        return a < b
      case ">":
        return a > b
      case "<=":
        return a <= b
      default:
        return a >= b
    }
  }
  const x = String(a)
  const y = String(b)
  switch (op) {
    case "=":
      return x === y && typeof a === typeof b
    case "<>":
      return x !== y || typeof a !== typeof b
    case "<":
      return x < y
    case ">":
      return x > y
    case "<=":
      return x <= y
    default:
      return x >= y
  }
}

const likeToRegExp = (pattern: string, escape: string | undefined): RegExp => {
  let source = ""
  for (let i = 0; i < pattern.length; i++) {
    const c = pattern[i]
    if (escape !== undefined && c === escape && i + 1 < pattern.length) {
      source += pattern[++i].replace(/[.*+?^${}()|[\]\\]/g, "\\$&")
    } else if (c === "%") source += "[\\s\\S]*"
    else if (c === "_") source += "[\\s\\S]"
    else source += c.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")
  }
  return new RegExp(`^${source}$`)
}

/** Compiles a SQL filter expression. */
export const sql = (text: string): Predicate => {
  const tokens = tokenize(text)
  let pos = 0
  const peek = () => tokens[pos]
  const isWord = (value: string) => {
    const t = tokens[pos]
    return t !== undefined && t.kind === "word" && t.value === value
  }
  const isOp = (value: string) => {
    const t = tokens[pos]
    return t !== undefined && t.kind === "op" && t.value === value
  }
  const expectOp = (value: string) => {
    if (!isOp(value)) throw new FilterSyntaxError(`expected "${value}" at token ${pos + 1} in filter: ${text}`)
    pos++
  }

  const parseOr = (): Expr => {
    let left = parseAnd()
    while (isWord("OR")) {
      pos++
      const l = left
      const r = parseAnd()
      left = (input) => {
        const a = l(input)
        if (a === true) return true
        const b = r(input)
        if (b === true) return true
        return a === null || b === null ? null : false
      }
    }
    return left
  }
  const parseAnd = (): Expr => {
    let left = parseNot()
    while (isWord("AND")) {
      pos++
      const l = left
      const r = parseNot()
      left = (input) => {
        const a = l(input)
        if (a === false) return false
        const b = r(input)
        if (b === false) return false
        return a === null || b === null ? null : true
      }
    }
    return left
  }
  const parseNot = (): Expr => {
    if (isWord("NOT")) {
      pos++
      const inner = parseNot()
      return (input) => {
        const v = inner(input)
        return v === null ? null : !v
      }
    }
    return parsePredicate()
  }
  const parsePredicate = (): Expr => {
    if (isWord("EXISTS")) {
      pos++
      expectOp("(")
      const t = peek()
      if (t === undefined || t.kind !== "ident") {
        throw new FilterSyntaxError(`EXISTS needs a property in filter: ${text}`)
      }
      pos++
      expectOp(")")
      return (input) => (t.scope === "sys" ? input.system(t.name) : input.user(t.name)) !== undefined
    }
    const left = parseValue()
    const t = peek()
    if (t !== undefined && t.kind === "op" && ["=", "<>", "<", ">", "<=", ">="].includes(t.value)) {
      pos++
      const right = parseValue()
      return (input) => compare(t.value, left(input), right(input))
    }
    if (isWord("IS")) {
      pos++
      const negate = isWord("NOT")
      if (negate) pos++
      if (!isWord("NULL")) throw new FilterSyntaxError(`expected NULL after IS in filter: ${text}`)
      pos++
      return (input) => {
        const v = left(input)
        const isNull = v === undefined || v === null
        return negate ? !isNull : isNull
      }
    }
    const negate = isWord("NOT")
    if (negate) pos++
    if (isWord("IN")) {
      pos++
      expectOp("(")
      const values: Array<Expr> = [parseValue()]
      while (isOp(",")) {
        pos++
        values.push(parseValue())
      }
      expectOp(")")
      return (input) => {
        const v = left(input)
        if (v === undefined || v === null) return null
        const found = values.some((e) => compare("=", v, e(input)) === true)
        return negate ? !found : found
      }
    }
    if (isWord("LIKE")) {
      pos++
      const pattern = peek()
      if (pattern === undefined || pattern.kind !== "string") {
        throw new FilterSyntaxError(`LIKE needs a string pattern in filter: ${text}`)
      }
      pos++
      let escape: string | undefined
      if (isWord("ESCAPE")) {
        pos++
        const e = peek()
        if (e === undefined || e.kind !== "string") {
          throw new FilterSyntaxError(`ESCAPE needs a string in filter: ${text}`)
        }
        escape = e.value
        pos++
      }
      const regexp = likeToRegExp(pattern.value, escape)
      return (input) => {
        const v = left(input)
        if (typeof v !== "string") return null
        const found = regexp.test(v)
        return negate ? !found : found
      }
    }
    if (negate) throw new FilterSyntaxError(`expected IN or LIKE after NOT in filter: ${text}`)
    return left
  }
  const parseValue = (): Expr => {
    const t = peek()
    if (t === undefined) throw new FilterSyntaxError(`unexpected end of filter: ${text}`)
    pos++
    switch (t.kind) {
      case "string":
      case "number":
        return () => t.value
      case "ident":
        return t.scope === "sys" ? (input) => input.system(t.name) : (input) => input.user(t.name)
      case "word":
        if (t.value === "TRUE") return () => true
        if (t.value === "FALSE") return () => false
        if (t.value === "NULL") return () => null
        break
      case "op":
        if (t.value === "(") {
          const inner = parseOr()
          expectOp(")")
          return inner
        }
    }
    throw new FilterSyntaxError(`unexpected token at position ${pos} in filter: ${text}`)
  }

  const expr = parseOr()
  if (pos !== tokens.length) throw new FilterSyntaxError(`unexpected text after position ${pos + 1} in filter: ${text}`)
  return (input) => expr(input) === true
}

/** A rule's filter, as configured. */
export type FilterConfig =
  | boolean
  | { readonly sql: string }
  | { readonly correlation: CorrelationFilter }

/** Compiles a configured filter. */
export const compile = (filter: FilterConfig): Predicate => {
  if (filter === true) return () => true
  if (filter === false) return () => false
  if ("sql" in filter) return sql(filter.sql)
  return correlation(filter.correlation)
}
