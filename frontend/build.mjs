// Builds the diagnostic viewer (frontend/viewer3d) into frontend/dist/viewer3d/, which
// pacs/settings.py serves as static files under static/viewer3d/: `npm run build`
// (the Makefile runs it after `npm ci`). esbuild-wasm: no native binary, so it installs
// with `npm ci --omit=optional` like the other packages.
import { build } from "esbuild-wasm";
import { copyFile, mkdir, rm } from "node:fs/promises";
import { createRequire } from "node:module";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const out = path.join(here, "dist", "viewer3d");
const require = createRequire(import.meta.url);

await rm(out, { recursive: true, force: true });
await mkdir(path.join(out, "wasm"), { recursive: true });

// The codecs are Emscripten builds that also run under Node: their Node branch's
// require("fs") and require("path") are never taken in a browser, so they resolve to nothing.
const nodeBuiltinsEmpty = {
  name: "node-builtins-empty",
  setup(b) {
    b.onResolve({ filter: /^(fs|path|crypto|module|url|worker_threads|ws|perf_hooks)$/ }, (args) => ({
      path: args.path,
      namespace: "empty",
    }));
    // vtk.js's XML writer (xmlbuilder2, unused here) extends Node's EventEmitter.
    b.onResolve({ filter: /^events$/ }, (args) => ({ path: args.path, namespace: "events-stub" }));
    b.onLoad({ filter: /.*/, namespace: "empty" }, () => ({ contents: "export default {};" }));
    b.onLoad({ filter: /.*/, namespace: "events-stub" }, () => ({
      contents: "export class EventEmitter { on() { return this; } emit() { return false; } } export default EventEmitter;",
    }));
  },
};
const common = {
  platform: "browser",
  plugins: [nodeBuiltinsEmpty],
  bundle: true,
  format: "esm",
  target: "es2022",
  minify: true,
  sourcemap: false,
  logLevel: "warning",
  legalComments: "linked",
  define: { "process.env.NODE_ENV": '"production"' },
};
// The page's script; dicom-image-loader starts its decoding workers from
// new URL("./decodeImageFrameWorker.js", import.meta.url): the worker is built beside it.
await build({ ...common, entryPoints: [path.join(here, "viewer3d", "index.js")], outfile: path.join(out, "viewer3d.js") });
await build({
  ...common,
  entryPoints: [path.join(here, "..", "node_modules", "@cornerstonejs", "dicom-image-loader", "dist", "esm", "decodeImageFrameWorker.js")],
  outfile: path.join(out, "decodeImageFrameWorker.js"),
});
await copyFile(path.join(here, "viewer3d", "viewer3d.css"), path.join(out, "viewer3d.css"));
// The codecs' WebAssembly, found by the workers under wasmBasePath (static/viewer3d/wasm/).
const wasm = {
  "@cornerstonejs/codec-charls/decodewasm": "charlswasm_decode.wasm", // JPEG-LS
  "@cornerstonejs/codec-openjpeg/decodewasm": "openjpegwasm_decode.wasm", // JPEG 2000
  "@cornerstonejs/codec-libjpeg-turbo-8bit/decodewasm": "libjpegturbowasm_decode.wasm", // JPEG baseline 8 bit
  "@cornerstonejs/codec-openjph/wasm": "openjphjs.wasm", // HTJ2K
};
for (const [spec, name] of Object.entries(wasm)) {
  await copyFile(require.resolve(spec), path.join(out, "wasm", name));
}
