// Generates docs/reference/*.md from the JSDoc of the public entry points, through the TypeScript
// compiler API, so the reference cannot drift from the sources.
//
//   tsx scripts/docs-reference.ts           writes docs/reference/
//   tsx scripts/docs-reference.ts --check   fails when a file is out of date, or when an export
//                                           has no JSDoc summary, `@since` or `@category`
//
// Signature blocks are fenced ```ts no-check (they are declarations, not programs); examples keep
// the fence of their JSDoc, so scripts/check-docs.ts type-checks them here as in the sources.
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { dirname, join, relative } from "node:path"
import { fileURLToPath } from "node:url"
import ts from "typescript"

const root = join(dirname(fileURLToPath(import.meta.url)), "..")
const outDir = join(root, "docs", "reference")
const check = process.argv.includes("--check")

interface Entry {
  readonly file: string
  readonly specifier: string
}

// The public entry points, as the package's `exports` map names them.
const entries: ReadonlyArray<Entry> = [
  { file: "src/index.ts", specifier: "effect-eventually" },
  { file: "src/testing.ts", specifier: "effect-eventually/testing" },
  { file: "src/emulator/index.ts", specifier: "effect-eventually/emulator" },
  { file: "src/cli/index.ts", specifier: "effect-eventually/cli" }
].filter((entry) => existsSync(join(root, entry.file)))

const categoryOrder = ["constructors", "layers", "services", "models", "errors", "testing"]

interface Doc {
  readonly summary: string
  readonly since: string | undefined
  readonly category: string | undefined
  readonly examples: ReadonlyArray<string>
  readonly deprecated: string | undefined
}

interface ExportDoc {
  readonly name: string
  readonly signatures: ReadonlyArray<string>
  readonly doc: Doc
  readonly location: string
}

interface ModuleDoc {
  readonly name: string
  readonly sourceFile: string
  readonly importedFrom: Array<string>
  readonly summary: Doc
  readonly description: string
  readonly exports: ReadonlyArray<ExportDoc>
}

const config = ts.getParsedCommandLineOfConfigFile(join(root, "tsconfig.base.json"), {}, {
  ...ts.sys,
  onUnRecoverableConfigFileDiagnostic: (diagnostic) => {
    throw new Error(ts.flattenDiagnosticMessageText(diagnostic.messageText, "\n"))
  }
})
if (config === undefined) throw new Error("cannot read tsconfig.base.json")
const program = ts.createProgram({
  rootNames: entries.map((entry) => join(root, entry.file)),
  options: { ...config.options, noEmit: true }
})
const checker = program.getTypeChecker()
const printer = ts.createPrinter({ removeComments: true, newLine: ts.NewLineKind.LineFeed })

const commentText = (comment: string | ts.NodeArray<ts.JSDocComment> | undefined): string =>
  (ts.getTextOfJSDocComment(comment) ?? "").trim()

// The JSDoc block closest to a declaration (a variable's is on its statement).
const jsDocOf = (node: ts.Node): ts.JSDoc | undefined => {
  const docs = ts.getJSDocCommentsAndTags(node).filter((doc): doc is ts.JSDoc => ts.isJSDoc(doc))
  return docs[docs.length - 1]
}

const emptyDoc: Doc = { summary: "", since: undefined, category: undefined, examples: [], deprecated: undefined }

const readDoc = (doc: ts.JSDoc | undefined): Doc => {
  if (doc === undefined) return emptyDoc
  const tag = (name: string) => doc.tags?.find((tag) => tag.tagName.text === name)
  const since = tag("since")
  const category = tag("category")
  const deprecated = tag("deprecated")
  return {
    summary: commentText(doc.comment),
    since: since === undefined ? undefined : commentText(since.comment) || undefined,
    category: category === undefined ? undefined : commentText(category.comment) || undefined,
    examples: (doc.tags ?? []).filter((tag) => tag.tagName.text === "example").map((tag) => commentText(tag.comment)),
    deprecated: deprecated === undefined ? undefined : commentText(deprecated.comment) || "Deprecated."
  }
}

// Several declarations may share a name (a schema and its type, a tag and its interface): the
// first non-empty value of each part wins.
const mergeDocs = (docs: ReadonlyArray<Doc>): Doc => ({
  summary: docs.map((doc) => doc.summary).filter((summary) => summary !== "").join("\n\n"),
  since: docs.find((doc) => doc.since !== undefined)?.since,
  category: docs.find((doc) => doc.category !== undefined)?.category,
  examples: docs.flatMap((doc) => doc.examples),
  deprecated: docs.find((doc) => doc.deprecated !== undefined)?.deprecated
})

// A JSDoc block at the top of a file describes the module when an import (or nothing but
// another JSDoc block) follows it, rather than the first export.
const moduleDescription = (sourceFile: ts.SourceFile): string => {
  const first = sourceFile.statements[0]
  if (first === undefined) return ""
  const docs = ts.getJSDocCommentsAndTags(first).filter((doc): doc is ts.JSDoc => ts.isJSDoc(doc))
  // An `export * as` statement has its own block: the file's comes before it.
  if (docs.length === 0 || (!ts.isImportDeclaration(first) && docs.length < 2)) return ""
  return commentText(docs[0].comment)
}

const typeFlags = ts.TypeFormatFlags.NoTruncation | ts.TypeFormatFlags.UseAliasDefinedOutsideCurrentScope |
  ts.TypeFormatFlags.WriteArrowStyleSignature
const maxTypeLength = 600

// Types inferred from long expressions (schemas) print as pages; past a limit, the checker's
// own truncation keeps their shape.
const printType = (type: ts.Type, node: ts.Node): string => {
  const full = checker.typeToString(type, node, typeFlags)
  return full.length <= maxTypeLength
    ? full
    : checker.typeToString(type, node, ts.TypeFormatFlags.UseAliasDefinedOutsideCurrentScope)
}

const print = (node: ts.Node, sourceFile: ts.SourceFile): string =>
  printer.printNode(ts.EmitHint.Unspecified, node, sourceFile)

// Method bodies of classes are implementation, not API.
const withoutBodies = (node: ts.ClassDeclaration): ts.ClassDeclaration =>
  ts.factory.updateClassDeclaration(
    node,
    node.modifiers,
    node.name,
    node.typeParameters,
    node.heritageClauses,
    node.members.flatMap((member): Array<ts.ClassElement> => {
      const hidden = ts.getCombinedModifierFlags(member as ts.Declaration) &
        (ts.ModifierFlags.Private | ts.ModifierFlags.Protected)
      if (hidden !== 0 || (member.name !== undefined && ts.isPrivateIdentifier(member.name))) return []
      if (ts.isMethodDeclaration(member)) {
        return [ts.factory.updateMethodDeclaration(
          member,
          member.modifiers,
          member.asteriskToken,
          member.name,
          member.questionToken,
          member.typeParameters,
          member.parameters,
          member.type,
          undefined
        )]
      }
      if (ts.isGetAccessorDeclaration(member)) {
        return [ts.factory.updateGetAccessorDeclaration(
          member,
          member.modifiers,
          member.name,
          member.parameters,
          member.type ?? ts.factory.createTypeReferenceNode(printType(checker.getTypeAtLocation(member), member)),
          undefined
        )]
      }
      if (ts.isConstructorDeclaration(member) || ts.isClassStaticBlockDeclaration(member)) return []
      if (ts.isPropertyDeclaration(member)) {
        return [ts.factory.updatePropertyDeclaration(
          member,
          member.modifiers,
          member.name,
          member.questionToken ?? member.exclamationToken,
          member.type ?? ts.factory.createTypeReferenceNode(printType(checker.getTypeAtLocation(member), member)),
          undefined
        )]
      }
      return [member]
    })
  )

const signatureOf = (declaration: ts.Declaration, name: string): string | undefined => {
  const sourceFile = declaration.getSourceFile()
  if (ts.isVariableDeclaration(declaration)) {
    const type = declaration.type !== undefined
      ? declaration.type.getText(sourceFile)
      : printType(checker.getTypeAtLocation(declaration.name), declaration)
    return `declare const ${name}: ${type}`
  }
  if (ts.isFunctionDeclaration(declaration)) {
    const signature = checker.getSignatureFromDeclaration(declaration)
    if (signature === undefined) return undefined
    return `declare function ${name}${checker.signatureToString(signature, declaration, typeFlags)}`
  }
  if (ts.isClassDeclaration(declaration)) return print(withoutBodies(declaration), sourceFile)
  if (
    ts.isInterfaceDeclaration(declaration) || ts.isTypeAliasDeclaration(declaration) ||
    ts.isEnumDeclaration(declaration) || ts.isModuleDeclaration(declaration)
  ) {
    return print(declaration, sourceFile)
  }
  if (ts.isExportSpecifier(declaration)) return undefined
  return undefined
}

// `export { a as b }` re-exports and `export * as` namespaces resolve to their targets.
const resolve = (symbol: ts.Symbol): ts.Symbol =>
  symbol.flags & ts.SymbolFlags.Alias ? checker.getAliasedSymbol(symbol) : symbol

const cleanSignature = (text: string): string =>
  text
    // Types the checker qualifies with their file are named as the module re-exports them.
    .replace(/import\("[^"]*\/([A-Za-z]+)(?:\.js|\.ts)?"\)\./g, "$1.")
    .replace(/^export /gm, "")
    .replace(/^declare const /, "const ")
    .replace(/^declare function /, "function ")

const exportDocs = (moduleSymbol: ts.Symbol): Array<ExportDoc> =>
  checker.getExportsOfModule(moduleSymbol).map((exported) => {
    const target = resolve(exported)
    const declarations = (target.declarations ?? []).filter((declaration) =>
      !ts.isFunctionDeclaration(declaration) || declaration.body === undefined ||
      !checker.isImplementationOfOverload(declaration)
    )
    const name = exported.getName()
    const signatures = declarations
      .map((declaration) => signatureOf(declaration, name))
      .filter((signature): signature is string => signature !== undefined)
      .map(cleanSignature)
    // `export { make as for }` may carry the JSDoc on the specifier.
    const specifiers = exported === target ? [] : (exported.declarations ?? []).filter(ts.isExportSpecifier)
    const docs = [...specifiers, ...declarations].map((declaration) =>
      readDoc(jsDocOf(ts.isVariableDeclaration(declaration) ? declaration.parent.parent : declaration))
    )
    const first = declarations[0]
    const location = first === undefined
      ? ""
      : `${relative(root, first.getSourceFile().fileName)}:${
        first.getSourceFile().getLineAndCharacterOfPosition(first.getStart()).line + 1
      }`
    return { name, signatures, doc: mergeDocs(docs), location }
  }).sort((a, b) => a.name.localeCompare(b.name))

const modules = new Map<string, ModuleDoc>()
const entryModules: Array<{ entry: Entry; description: string; modules: Array<string> }> = []
const problems: Array<string> = []

for (const entry of entries) {
  const sourceFile = program.getSourceFile(join(root, entry.file))
  if (sourceFile === undefined) throw new Error(`cannot read ${entry.file}`)
  const entrySymbol = checker.getSymbolAtLocation(sourceFile)
  if (entrySymbol === undefined) throw new Error(`${entry.file} is not a module`)
  const names: Array<string> = []
  for (const exported of checker.getExportsOfModule(entrySymbol)) {
    const name = exported.getName()
    const declaration = exported.declarations?.[0]
    const statement = declaration === undefined ? undefined : ts.findAncestor(declaration, ts.isExportDeclaration)
    const summary = readDoc(statement === undefined ? undefined : jsDocOf(statement))
    const target = resolve(exported)
    const moduleFile = target.valueDeclaration ?? target.declarations?.[0]
    if (moduleFile === undefined || !ts.isSourceFile(moduleFile)) {
      problems.push(`${entry.file}: ${name} is not a namespace re-export (export * as ${name} from "...")`)
      continue
    }
    names.push(name)
    const file = relative(root, moduleFile.fileName)
    if (summary.summary === "") problems.push(`${entry.file}: ${name}: no JSDoc summary on the namespace export`)
    if (summary.since === undefined) problems.push(`${entry.file}: ${name}: no @since on the namespace export`)
    const known = modules.get(name)
    if (known !== undefined) {
      if (known.sourceFile !== file) problems.push(`${name} names two modules: ${known.sourceFile} and ${file}`)
      known.importedFrom.push(entry.specifier)
      continue
    }
    modules.set(name, {
      name,
      sourceFile: file,
      importedFrom: [entry.specifier],
      summary,
      description: moduleDescription(moduleFile),
      exports: exportDocs(target)
    })
  }
  entryModules.push({ entry, description: moduleDescription(sourceFile), modules: names })
}

for (const module of modules.values()) {
  for (const exported of module.exports) {
    const where = `${exported.location} ${module.name}.${exported.name}`
    if (exported.doc.summary === "") problems.push(`${where}: no JSDoc summary`)
    if (exported.doc.since === undefined) problems.push(`${where}: no @since`)
    if (exported.doc.category === undefined) problems.push(`${where}: no @category`)
  }
}

// GitHub's heading anchors: lower case, punctuation dropped, spaces to dashes.
const anchor = (heading: string): string => heading.toLowerCase().replace(/[^a-z0-9 _-]/g, "").replace(/ /g, "-")

// An export named as its module (a service tag) comes after the page's title: GitHub suffixes
// the second identical heading.
const anchorOf = (module: ModuleDoc, name: string): string => name === module.name ? `${anchor(name)}-1` : anchor(name)

// `{@link X}` reads as code, and links to X when X is documented on the same page.
const renderLinks = (text: string, module: ModuleDoc): string =>
  text.replace(/\{@link(?:code|plain)?\s+([^}|\s]+)(?:\s*\|\s*|\s+)?([^}]*)\}/g, (_, target: string, label: string) => {
    const shown = label.trim() === "" ? target : label.trim()
    const head = target.split(".")[0]
    return module.exports.some((exported) => exported.name === head)
      ? `[\`${shown}\`](#${anchorOf(module, head)})`
      : `\`${shown}\``
  })

// An example fenced in its JSDoc keeps its fence (so it is type-checked here too); a bare one is
// shown as code without being checked.
const renderExample = (example: string): string =>
  example.trimStart().startsWith("```") ? example : "```ts no-check\n" + example + "\n```"

const categoryRank = (category: string): number => {
  const index = categoryOrder.indexOf(category)
  return index === -1 ? categoryOrder.length : index
}

const grouped = (module: ModuleDoc): Array<[string, Array<ExportDoc>]> => {
  const groups = new Map<string, Array<ExportDoc>>()
  for (const exported of module.exports) {
    const category = exported.doc.category ?? "uncategorized"
    const group = groups.get(category) ?? []
    group.push(exported)
    groups.set(category, group)
  }
  return [...groups.entries()].sort(([a], [b]) => categoryRank(a) - categoryRank(b) || a.localeCompare(b))
}

const header = "<!-- Generated by scripts/docs-reference.ts from the JSDoc in src/. Do not edit. -->\n"

const renderModule = (module: ModuleDoc): string => {
  const lines: Array<string> = [header, `# ${module.name}`, ""]
  for (const specifier of module.importedFrom) lines.push(`\`import { ${module.name} } from "${specifier}"\`  `)
  lines.push("", `Source: [\`${module.sourceFile}\`](../../${module.sourceFile})`, "")
  if (module.summary.summary !== "") lines.push(renderLinks(module.summary.summary, module), "")
  if (module.description !== "" && module.description !== module.summary.summary) {
    lines.push(renderLinks(module.description, module), "")
  }
  if (module.summary.since !== undefined) lines.push(`Since ${module.summary.since}`, "")
  const groups = grouped(module)
  if (groups.length > 0) {
    lines.push("## Contents", "")
    for (const [category, exported] of groups) {
      lines.push(
        `- [${category}](#${anchor(category)}): ${
          exported.map((item) => `[\`${item.name}\`](#${anchorOf(module, item.name)})`).join(", ")
        }`
      )
    }
    lines.push("")
  }
  for (const [category, exported] of groups) {
    lines.push(`## ${category}`, "")
    for (const item of exported) {
      lines.push(`### ${item.name}`, "")
      if (item.signatures.length > 0) lines.push("```ts no-check", item.signatures.join("\n\n"), "```", "")
      if (item.doc.deprecated !== undefined) lines.push(`**Deprecated.** ${item.doc.deprecated}`, "")
      if (item.doc.summary !== "") lines.push(renderLinks(item.doc.summary, module), "")
      for (const example of item.doc.examples) lines.push("**Example**", "", renderExample(example), "")
      if (item.doc.since !== undefined) lines.push(`Since ${item.doc.since}`, "")
    }
  }
  return lines.join("\n").replace(/\n{3,}/g, "\n\n").trimEnd() + "\n"
}

const renderIndex = (): string => {
  const lines: Array<string> = [
    header,
    "# API reference",
    "",
    "Every public module, generated from the JSDoc of the sources by `npm run docs:reference`.",
    "The guides in [`docs/`](..) explain how the pieces fit together.",
    ""
  ]
  for (const { description, entry, modules: names } of entryModules) {
    lines.push(`## \`${entry.specifier}\``, "")
    if (description !== "") lines.push(description, "")
    lines.push("| Module | Summary |", "| --- | --- |")
    for (const name of names) {
      const module = modules.get(name)
      const summary = (module?.summary.summary ?? "").replace(/\s*\n\s*/g, " ").replace(/\|/g, "\\|")
      lines.push(`| [${name}](${name}.md) | ${summary} |`)
    }
    lines.push("")
  }
  return lines.join("\n").trimEnd() + "\n"
}

const files = new Map<string, string>([["README.md", renderIndex()]])
for (const module of modules.values()) files.set(`${module.name}.md`, renderModule(module))

const existing = existsSync(outDir) ? readdirSync(outDir).filter((file) => file.endsWith(".md")) : []

if (check) {
  const stale: Array<string> = []
  for (const [file, text] of files) {
    const path = join(outDir, file)
    if (!existsSync(path) || readFileSync(path, "utf8") !== text) stale.push(file)
  }
  for (const file of existing) if (!files.has(file)) stale.push(`${file} (no such module)`)
  for (const file of stale) console.error(`docs/reference/${file} is out of date`)
  for (const problem of problems) console.error(problem)
  if (stale.length > 0) console.error("Run `npm run docs:reference` to regenerate docs/reference/.")
  if (stale.length > 0 || problems.length > 0) process.exit(1)
  console.log(`docs:reference: ${files.size} files up to date, every export documented`)
} else {
  mkdirSync(outDir, { recursive: true })
  for (const file of existing) if (!files.has(file)) rmSync(join(outDir, file))
  for (const [file, text] of files) writeFileSync(join(outDir, file), text)
  for (const problem of problems) console.warn(problem)
  console.log(
    `docs:reference: wrote ${files.size} files to docs/reference/` +
      (problems.length > 0 ? `; ${problems.length} documentation problems (see above)` : "")
  )
}
