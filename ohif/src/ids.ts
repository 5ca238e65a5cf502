/** Names shared by the extension and the mode, which are built as separate modules. */
export const EXTENSION_ID = 'samlabel-ohif';
export const PANEL = `${EXTENSION_ID}.panelModule.samlabel`;
