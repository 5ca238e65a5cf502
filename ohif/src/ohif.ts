/**
 * What this extension borrows from the running OHIF app instead of bundling its own copies: OHIF's React
 * (a second React breaks hooks) and cornerstone (the same caches, tools and rendering engines).
 */
declare const OHIF_REACT_MODULE: number; // the app bundle's module id of react, found by scripts/build_ohif

type Require = (id: number) => any;

/** The app bundle's module loader, reached by pushing an empty chunk whose runtime callback receives it. */
function appRequire(): Require {
  let found: Require | undefined;
  const chunk = `samlabel-${Math.random()}`; // a chunk id the loader has not seen, or it skips the callback
  (globalThis as any).rspackChunk.push([[chunk], {}, (require: Require) => (found = require)]);
  if (!found) throw new Error('samlabel: OHIF chunk loader not found (is this OHIF 3.13.2?)');
  return found;
}

export const React = appRequire()(OHIF_REACT_MODULE);
if (!React?.useState) throw new Error('samlabel: React not found in the OHIF bundle (rebuild with scripts/build_ohif)');

export function cornerstoneLibraries(extensionManager: any): { cornerstone: any; cornerstoneTools: any } {
  return extensionManager
    .getModuleEntry('@ohif/extension-cornerstone.utilityModule.common')
    .exports.getCornerstoneLibraries();
}
