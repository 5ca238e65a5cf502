// Builds the samlabel OHIF app into the folder given as argument: OHIF's prebuilt app (@ohif/app, from the
// lockfile) re-rooted from / to /samlabel-ohif/, this folder's app-config.js, and the extension and mode
// bundled by esbuild into samlabel/. Called by scripts/build_ohif.
import { cpSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { build } from 'esbuild';

const BASE = '/samlabel-ohif/';
const out = process.argv[2];
const dist = 'node_modules/@ohif/app/dist';

rmSync(out, { recursive: true, force: true });
cpSync(dist, out, { recursive: true });
cpSync('app-config.js', join(out, 'app-config.js'));

const rewrite = (file, edit) => writeFileSync(file, edit(readFileSync(file, 'utf8')));
rewrite(join(out, 'index.html'), (html) =>
  html.replaceAll('window.PUBLIC_URL="/"', `window.PUBLIC_URL="${BASE}"`).replace(/(src|href)="\/(?!\/)/g, `$1="${BASE}`)
);
for (const name of readdirSync(out)) {
  const file = join(out, name);
  if (name.endsWith('.js')) rewrite(file, (js) => js.replaceAll('__webpack_require__.p = "/";', `__webpack_require__.p = "${BASE}";`));
  if (name.endsWith('.css')) rewrite(file, (css) => css.replace(/url\(\/(?!\/)/g, `url(${BASE}`));
}

// OHIF's React, which our panel must share: the app bundle's module id of react/index.js
const app = readdirSync(out).find((name) => /^app\.bundle\..*\.js$/.test(name));
const react = readFileSync(join(out, app), 'utf8').match(
  /EXTERNAL MODULE: [./]*node_modules\/react\/index\.js\nvar react = __webpack_require__\((\d+)\)/
);
if (!react) throw new Error(`react's module id not found in ${app}: not the OHIF build this was written for`);

await build({
  entryPoints: { extension: 'src/extension.ts', mode: 'src/mode.ts' },
  outdir: join(out, 'samlabel'),
  bundle: true,
  format: 'esm',
  target: 'es2020',
  jsxFactory: 'React.createElement',
  jsxFragment: 'React.Fragment',
  define: { OHIF_REACT_MODULE: react[1] },
  logLevel: 'warning',
});
console.log(`built ${out} (OHIF ${JSON.parse(readFileSync(`${dist}/../package.json`, 'utf8')).version}, react module ${react[1]})`);
