/**
 * Recipe files: YAML (through the `yaml` package) or JSON (read by the same YAML 1.2 parser, of
 * which JSON is a subset, so duplicate keys are refused in both) -> a schema-checked
 * {@link Recipe} (src/ir/recipe.ts holds the schema and the resolution against a model).
 *
 *   defaults: {weight_bits: 4, group_size: 32, weight_method: gptq, act_bits: 8, kv_bits: 8, observer: mse}
 *   overrides:
 *     model.layers.*.mlp.down_proj: {weight_bits: 8}
 *     lm_head: {weight_bits: 8}
 *
 * The file is read whole (at most {@link MAX_RECIPE_BYTES}); the overrides keep their order in the
 * file. {@link stringifyRecipe} writes one back (for a recipe chosen by a tool, e.g. the manifest's
 * `precision.recipe`), and reading it gives the same recipe.
 */
import * as fs from 'node:fs';
import { isMap, isScalar, parseDocument, stringify } from 'yaml';
import { RecipeError, recipeFromValue, type Recipe } from '../src/ir/recipe.js';
import type { RecipeText } from '../src/ir/precision.js';

/** Largest recipe file read (bytes); a recipe names a few dozen globs. */
export const MAX_RECIPE_BYTES = 1 << 20;

/**
 * Parses recipe text (YAML or JSON).
 * @param source the file, named in errors
 * @throws RecipeError naming `source` (and the line for syntax errors, the key for schema errors)
 */
export function parseRecipe(text: string, source: string): Recipe {
  const doc = parseDocument(text, { uniqueKeys: true, prettyErrors: true });
  const err = doc.errors[0];
  if (err) throw new RecipeError(source, '', `not valid YAML/JSON: ${err.message.split('\n')[0].replace(/:$/, '')}`);
  // The overrides in file order, as written (a JavaScript object would put integer-like keys first).
  const ov = doc.get('overrides');
  const order = isMap(ov) ? ov.items.map((p) => String(isScalar(p.key) ? p.key.value : p.key)) : undefined;
  return recipeFromValue(doc.toJS({ maxAliasCount: 100 }), source, order);
}

/**
 * Reads a recipe file (`quantize --recipe FILE`).
 * @throws RecipeError (a usage error, exit code 2) naming the file: missing or unreadable, larger than
 *   {@link MAX_RECIPE_BYTES}, not YAML/JSON, or not a recipe (unknown key, bad value, bad glob)
 */
export function readRecipe(file: string): Recipe {
  let st: fs.Stats;
  try {
    st = fs.statSync(file);
  } catch (e) {
    throw new RecipeError(file, '', `cannot read the recipe: ${(e as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file' : (e as Error).message}`);
  }
  if (!st.isFile()) throw new RecipeError(file, '', 'not a file');
  const size = st.size;
  if (size > MAX_RECIPE_BYTES) throw new RecipeError(file, '', `${size} bytes: larger than a recipe can be (${MAX_RECIPE_BYTES} bytes)`);
  return parseRecipe(fs.readFileSync(file, 'utf8'), file);
}

/**
 * A recipe as YAML text (`defaults`, then `overrides` in order, each entry a flow mapping on one
 * line: `model.layers.*.mlp.down_proj: { weight_bits: 8 }`); {@link parseRecipe} reads it back to
 * the same recipe.
 * @param text the recipe as written (src/ir/recipe.ts recipeText, or a manifest's `precision.recipe`)
 * @param notes YAML comments: `header` (lines before the document), `overrides` (glob -> a comment
 *   after its entry, e.g. what the promotion measured); comments do not change the recipe read back
 */
export function stringifyRecipe(text: RecipeText, notes: { header?: string; overrides?: Record<string, string> } = {}): string {
  const doc = parseDocument(stringify({ defaults: text.defaults, overrides: text.overrides }));
  for (const key of ['defaults', 'overrides']) {
    const node = doc.get(key);
    if (!isMap(node)) continue;
    if (key === 'defaults') node.flow = true;
    else
      for (const p of node.items)
        if (isMap(p.value)) {
          p.value.flow = true;
          const note = notes.overrides?.[String(isScalar(p.key) ? p.key.value : p.key)];
          if (note) p.value.comment = ` ${note}`;
        }
  }
  if (notes.header) doc.commentBefore = notes.header.split('\n').map((l) => ` ${l}`).join('\n');
  const out = doc.toString();
  return out.endsWith('\n') ? out : out + '\n';
}
