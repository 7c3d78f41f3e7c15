/** edgellm's version, read from package.json (works from src/ under vitest and from dist/src/). */
import * as fs from 'node:fs';
import { fileURLToPath } from 'node:url';
import * as path from 'node:path';

function findVersion(): string {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 4; i++) {
    const p = path.join(dir, 'package.json');
    if (fs.existsSync(p)) {
      const pkg = JSON.parse(fs.readFileSync(p, 'utf8'));
      if (pkg.name === 'edgellm') return String(pkg.version);
    }
    dir = path.dirname(dir);
  }
  return '0.0.0';
}

export const VERSION = findVersion();
