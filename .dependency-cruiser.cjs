/**
 * dependency-cruiser rules for edgellm's layering (run by `npm run lint:deps`, which `npm test`
 * and therefore CI run first).
 *
 * Only project files are constrained: every rule's `to` side leaves out node builtins and npm
 * packages, so those may be imported anywhere. Type-only imports count like any other import (tsPreCompilationDeps: true
 * below keeps them in the graph; no rule excludes the `type-only` dependency type).
 *
 * @type {import('dependency-cruiser').IConfiguration}
 */

/**
 * What the layering rules leave alone: npm packages (matched both by dependency type and by a
 * node_modules/ anywhere in the resolved path, so a symlinked node_modules still counts) and
 * node builtins.
 */
const EXTERNAL = '(^|/)node_modules/';
const NOT_OURS = [
  'core',
  'npm',
  'npm-dev',
  'npm-optional',
  'npm-peer',
  'npm-bundled',
  'npm-no-pkg',
  'npm-unknown',
];

module.exports = {
  forbidden: [
    {
      name: 'formats-only-core-ir',
      comment:
        'formats/ (file formats: HAR, HEF, ONNX, safetensors, ...) may import, of our own code, ' +
        'only src/core/, src/ir/ and formats/ itself.',
      severity: 'error',
      from: { path: '^formats/' },
      to: {
        dependencyTypesNot: NOT_OURS,
        pathNot: [EXTERNAL, '^src/core/', '^src/ir/', '^formats/'],
      },
    },
    {
      name: 'engine-only-core-ir-formats',
      comment:
        'src/engine/ may import, of our own code, only src/core/, src/ir/, formats/ and ' +
        'src/engine/ itself.',
      severity: 'error',
      from: { path: '^src/engine/' },
      to: {
        dependencyTypesNot: NOT_OURS,
        pathNot: [EXTERNAL, '^src/core/', '^src/ir/', '^formats/', '^src/engine/'],
      },
    },
    {
      name: 'compiler-only-core-ir-formats',
      comment: 'src/compiler/ (lowering, KV layout, compile) may import, of our own code, only src/core/, src/ir/, formats/ and src/compiler/ itself.',
      severity: 'error',
      from: { path: '^src/compiler/' },
      to: { dependencyTypesNot: NOT_OURS, pathNot: [EXTERNAL, '^src/core/', '^src/ir/', '^formats/', '^src/compiler/'] },
    },
    {
      name: 'runtime-layers',
      comment:
        'src/runtime/ (backends, sampling, generation) may import, of our own code, only src/core/, src/ir/, formats/, src/engine/, ' +
        'the graph I/O contract of the compiler (src/compiler/io-contract.ts, lora-feeds.ts, kv-layout.ts) and its LoRA-branch stripping (lora-strip.ts) and src/runtime/ itself.',
      severity: 'error',
      from: { path: '^src/runtime/' },
      to: {
        dependencyTypesNot: NOT_OURS,
        pathNot: [EXTERNAL, '^src/core/', '^src/ir/', '^formats/', '^src/engine/', '^src/compiler/(io-contract|lora-feeds|kv-layout|lora-strip)[.]ts$', '^src/runtime/'],
      },
    },
    {
      name: 'eval-layers',
      comment: 'src/eval/ (ppl, kld, hellaswag, gate, bench) may import, of our own code, only src/runtime/, src/core/, src/ir/, formats/ and src/eval/ itself.',
      severity: 'error',
      from: { path: '^src/eval/' },
      to: { dependencyTypesNot: NOT_OURS, pathNot: [EXTERNAL, '^src/runtime/', '^src/core/', '^src/ir/', '^formats/', '^src/eval/'] },
    },
    {
      name: 'serve-layers',
      comment: 'src/serve/ (the HTTP server) may import, of our own code, only src/runtime/, src/core/, src/ir/, formats/ and src/serve/ itself.',
      severity: 'error',
      from: { path: '^src/serve/' },
      to: { dependencyTypesNot: NOT_OURS, pathNot: [EXTERNAL, '^src/runtime/', '^src/core/', '^src/ir/', '^formats/', '^src/serve/'] },
    },
    {
      name: 'calibration-layers',
      comment:
        'calibration/ (datasets, windows, observers, Hessians) may import, of our own code, only src/core/, src/ir/, formats/, src/engine/, ' +
        'the graph I/O contract (src/compiler/io-contract.ts) and calibration/ itself; it holds no passes.',
      severity: 'error',
      from: { path: '^calibration/' },
      to: { dependencyTypesNot: NOT_OURS, pathNot: [EXTERNAL, '^src/core/', '^src/ir/', '^formats/', '^src/engine/', '^src/compiler/io-contract[.]ts$', '^calibration/'] },
    },
    {
      name: 'runtime-eval-no-passes-calibration',
      comment:
        'src/runtime/ and src/eval/ run and measure compiled models; they never import the ' +
        'quantization passes (passes/) or calibration (calibration/).',
      severity: 'error',
      from: { path: '^src/(runtime|eval)/' },
      to: { path: '^(passes|calibration)/' },
    },
    {
      name: 'nobody-imports-cli',
      comment:
        'src/cli/ is the top of the tree: nothing outside it imports it (tests under test/ and the entry-point scripts under scripts/, which stand beside the CLI, may).',
      severity: 'error',
      from: { pathNot: ['^src/cli/', '^test/', '^scripts/'] },
      to: { path: '^src/cli/' },
    },
    {
      name: 'core-imports-nothing-of-ours',
      comment: 'src/core/ is the bottom of the tree: of our own code it imports only src/core/.',
      severity: 'error',
      from: { path: '^src/core/' },
      to: {
        dependencyTypesNot: NOT_OURS,
        pathNot: [EXTERNAL, '^src/core/'],
      },
    },
    {
      name: 'ir-only-core',
      comment: 'src/ir/ may import, of our own code, only src/core/ and src/ir/ itself.',
      severity: 'error',
      from: { path: '^src/ir/' },
      to: {
        dependencyTypesNot: NOT_OURS,
        pathNot: [EXTERNAL, '^src/core/', '^src/ir/'],
      },
    },
    {
      name: 'no-circular',
      comment:
        'No import cycles anywhere, type-only imports included: a cycle means two modules ' +
        'belong in one layer or a shared piece belongs lower down.',
      severity: 'error',
      from: {},
      to: { circular: true },
    },
  ],
  options: {
    // Never descend into packages or build output; npm packages appear as leaves only.
    doNotFollow: { path: ['node_modules'] },
    exclude: { path: ['^dist/'] },
    // Keep imports that TypeScript erases on compilation (`import type`, type-only uses), so
    // the rules and the cycle check see them.
    tsPreCompilationDeps: true,
    tsConfig: { fileName: 'tsconfig.json' },
    // NodeNext specifiers: `import './x.js'` in a .ts file resolves to ./x.ts (dependency-cruiser
    // does this itself when the .js file does not exist, as tsc does).
    enhancedResolveOptions: {
      exportsFields: ['exports'],
      conditionNames: ['import', 'require', 'node', 'default', 'types'],
      mainFields: ['module', 'main', 'types', 'typings'],
    },
    moduleSystems: ['es6', 'cjs'],
  },
};
