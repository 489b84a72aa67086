/**
 * An example OHIF Viewer (v3) configuration for the regional PACS's DICOMweb.
 *
 * Not a copy of OHIF: a documented example, checked by tests/archive/test_ohif.py
 * (which replays the requests OHIF makes with these settings). Put it where your
 * OHIF build reads its configuration (platform/app/public/config/, or the file
 * named by APP_CONFIG in OHIF's Docker image) and change the two addresses.
 *
 * The PACS side (README, "Opening a study in OHIF"):
 *   PACS_CORS_ALLOWED_ORIGINS=https://ohif.asugi.example.it   (this viewer's origin)
 *   PACS_PUBLIC_URL=https://pacs.asugi.example.it             (behind a proxy: the BulkDataURIs' host)
 *
 * Authentication: OHIF sends the archive's API token as "Authorization: Bearer <token>"
 * when the viewer is opened with ?token=<token> (it removes it from the address bar);
 * a token comes from POST https://pacs.asugi.example.it/api/token/ and expires after
 * PACS_API_TOKEN_HOURS. What the token's account may see is the access policy's: a study
 * the patient hid, or another health authority's, does not exist for OHIF either.
 *
 *   https://ohif.asugi.example.it/viewer?StudyInstanceUIDs=<study UID>&token=<token>
 */
window.config = {
  routerBasename: '/',
  extensions: [],
  modes: [],
  showStudyList: true,
  defaultDataSourceName: 'pacs',
  dataSources: [
    {
      namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
      sourceName: 'pacs',
      configuration: {
        friendlyName: 'PACS regionale',
        name: 'pacs',
        // The regional root: every study the token's account may see. A facility's own
        // root is /dicomweb/<facility code> (e.g. /dicomweb/TS-CAT).
        qidoRoot: 'https://pacs.asugi.example.it/dicomweb',
        wadoRoot: 'https://pacs.asugi.example.it/dicomweb',
        wadoUriRoot: 'https://pacs.asugi.example.it/dicomweb/wado',
        qidoSupportsIncludeField: true, // includefield=<tag>,... and includefield=all
        supportsFuzzyMatching: true, // fuzzymatching=true: names and descriptions by any part, any case
        supportsWildcard: true, // * and ? in PatientName, PatientID, AccessionNumber, StudyDescription
        imageRendering: 'wadors', // frames: WADO-RS .../frames/N, decoded by Cornerstone
        thumbnailRendering: 'wadors',
        enableStudyLazyLoad: true, // series metadata one series at a time
        // The archive does not transcode: frames come as stored (compressed bitstream, or
        // native pixels as little-endian application/octet-stream), the part's
        // transfer-syntax naming the decoder. This is OHIF's default Accept, written out.
        acceptHeader: ['multipart/related; type="application/octet-stream"; transfer-syntax=*'],
        // BulkDataURIs in the metadata are absolute (on PACS_PUBLIC_URL when set).
        bulkDataURI: { enabled: true },
        staticWado: false,
        singlepart: false, // bulk data and frames come as multipart/related
        supportsReject: false,
        supportsStow: false, // storing needs archive.add_instance: not a viewer's job
        dicomUploadEnabled: false,
        omitQuotationForMultipartRequest: false, // quoted or not, both are understood
      },
    },
  ],
};
