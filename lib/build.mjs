// `npm run build` (and `npm pack`, through prepack): the library as plain
// JavaScript and its type declarations, so `import { connect } from 'revproxy'`
// works from another project with plain Node, no tsx.
//
//   dist/index.js        lib/index.ts bundled by esbuild (ESM, for package.json's oldest Node; dependencies stay imports)
//   dist/types/**.d.ts   declarations by tsc (tsconfig.lib.json); package.json `types` points at lib/index.d.ts
//   .build/revproxy.mjs  the CLI's bundle (cli/bundle.mjs), so an installed package runs `revproxy`
//                        without writing into its own folder
import { spawnSync } from 'node:child_process';
import { rmSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import * as esbuild from 'esbuild';
import { bundle, nodeTarget } from '../cli/bundle.mjs';

const root = fileURLToPath(new URL('..', import.meta.url));
rmSync(`${root}/dist`, { recursive: true, force: true });

await esbuild.build({
  entryPoints: [`${root}/lib/index.ts`],
  outfile: `${root}/dist/index.js`,
  bundle: true,
  platform: 'node',
  format: 'esm',
  target: nodeTarget(),
  packages: 'external',
  sourcemap: true,
  logLevel: 'warning',
});

const tsc = spawnSync(process.execPath, [`${root}/node_modules/typescript/bin/tsc`, '-p', `${root}/tsconfig.lib.json`], { stdio: 'inherit' });
if (tsc.status !== 0) {
  console.error('build: tsc could not write the declarations');
  process.exit(1);
}

await bundle({ force: true });
