// Builds a JS program into a wasi:http component.
//
//   node build.mjs hello.js hello.wasm        a Node http program, with the node-http prelude,
//                                             served through StarlingMonkey's fetch event: the
//                                             faster, one request per instance
//   node build.mjs --reusable hello.js hello-reusable.wasm
//                                             the same through the wasi:http incomingHandler
//                                             export, for wk.dev/instance-reuse
//   node build.mjs --plain fetch.js fetch.wasm   a program that is already a wasi:http handler
//                                                (addEventListener('fetch') or incomingHandler)
//
// A Node program is CommonJS: it is wrapped in a function with its own `require`, `module` and
// `exports`, after node-http.js has set up `require('http')`.
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { componentize } from '@bytecodealliance/componentize-js';

const here = dirname(fileURLToPath(import.meta.url));
const args = process.argv.slice(2);
const plain = args[0] === '--plain';
const reusable = args[0] === '--reusable';
if (plain || reusable) args.shift();
if (args.length !== 2) {
  console.error('usage: node build.mjs [--plain | --reusable] PROGRAM.js OUT.wasm');
  process.exit(2);
}
const [program, out] = args.map((p) => resolve(p));

let sourcePath = program;
if (!plain) {
  const build = join(here, 'build');
  await mkdir(build, { recursive: true });
  const text = await readFile(program, 'utf8');
  sourcePath = join(build, 'app.js');
  await writeFile(
    sourcePath,
    (reusable
      ? `import { incomingHandler } from '../node-http.js';\nexport { incomingHandler };\n`
      : `import { serveFetchEvents } from '../node-http.js';\nserveFetchEvents();\n`) +
      `(function (exports, require, module, __filename, __dirname) {\n${text}\n})` +
      `({}, globalThis.require, { exports: {} }, ${JSON.stringify(program)}, ${JSON.stringify(dirname(program))});\n`,
  );
}

const started = Date.now();
let component;
try {
  ({ component } = await componentize({
    sourcePath,
    witPath: join(here, '..', 'wit'),
    worldName: 'hello',
  }));
} catch (e) {
  // ComponentizeJS runs the program's top-level code while building. Some calls there make its
  // engine trap without a word about the cause; the wasm backtrace after it says nothing more.
  let text = String(e?.message ?? e);
  if (!plain) {
    // Positions in the wrapped program, three lines below the user's.
    text = text.replaceAll(/build\/app\.js:(\d+):/g, (_, n) => `${program}:${Number(n) - 3}:`);
  }
  const lines = text.split('\n');
  let cut = lines.findIndex((l) => l.includes('wasm backtrace'));
  if (cut < 0) cut = 12;
  while (cut > 0 && /^\s*(Caused by:)?\s*$/.test(lines[cut - 1])) cut--;
  console.error(`${program}: the build failed:\n${lines.slice(0, cut).join('\n')}`);
  if (text.includes('componentize.wizer` function trapped')) {
    console.error(
      'The engine stopped while running the program\'s top-level code, which runs at build ' +
        'time. Calls that need the host are not available then: performance.now(), ' +
        'Math.random() and crypto.getRandomValues() stop it this way. Make them in the request ' +
        'handler instead.',
    );
  }
  process.exit(1);
}
await writeFile(out, component);
console.log(`${out}: ${(component.length / 1e6).toFixed(1)} MB in ${((Date.now() - started) / 1000).toFixed(0)} s`);
