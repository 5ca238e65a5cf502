/** OHIF's configuration for the samlabel build, served at /samlabel-ohif/ by the samlabel server. */
window.config = {
  routerBasename: '/samlabel-ohif/',
  showStudyList: true,
  // our extension and mode, imported by URL at start-up (OHIF's loadModule falls back to import())
  extensions: ['/samlabel-ohif/samlabel/extension.js'],
  modes: ['/samlabel-ohif/samlabel/mode.js'],
  investigationalUseDialog: { option: 'never' },
  showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: true,
  showLoadingIndicator: true,
  strictZSpacingForVolumeViewport: true,
  maxNumberOfWebWorkers: 2,
  defaultDataSourceName: 'dicomweb',
  // the PACS through the server's DICOMweb proxy, as MONAI Label's own /ohif/ reads it
  dataSources: [
    {
      namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
      sourceName: 'dicomweb',
      configuration: {
        friendlyName: 'samlabel PACS proxy',
        name: 'samlabel',
        wadoUriRoot: '/proxy/dicom/wado',
        qidoRoot: '/proxy/dicom/qido',
        wadoRoot: '/proxy/dicom/wado',
        qidoSupportsIncludeField: true,
        imageRendering: 'wadors',
        thumbnailRendering: 'wadors',
        enableStudyLazyLoad: false,
        supportsFuzzyMatching: true,
        supportsWildcard: true,
        bulkDataURI: { enabled: true },
      },
    },
  ],
};
