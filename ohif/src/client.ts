/** The server calls the panel makes: MONAI Label's REST API as this app extends it (docs/api.md). */

export type InferResult = { labels: Uint8Array; params: Record<string, any> };

export class SamClient {
  constructor(readonly server: string) {}

  private url(path: string, query: Record<string, string> = {}): string {
    const url = new URL(path, this.server.endsWith('/') ? this.server : `${this.server}/`);
    Object.entries(query).forEach(([key, value]) => url.searchParams.set(key, value));
    return url.toString();
  }

  private async call(path: string, init: RequestInit = {}, query: Record<string, string> = {}) {
    const answer = await fetch(this.url(path, query), init);
    if (!answer.ok) throw new Error(`${path}: ${answer.status} ${await answer.text()}`);
    return answer;
  }

  async info(): Promise<any> {
    return (await this.call('info/')).json();
  }

  /** Runs a model; the label volume comes back as raw uint8 NRRD (i fastest, as cornerstone stores voxels). */
  async infer(model: string, image: string, params: Record<string, any>): Promise<InferResult> {
    const form = new FormData();
    form.append('params', JSON.stringify({ ...params, result_extension: '.nrrd', result_dtype: 'uint8', result_compress: false }));
    const answer = await this.call(`infer/${encodeURIComponent(model)}`, { method: 'POST', body: form }, { image, output: 'all' });
    const parts = await answer.formData();
    const file = parts.get('image') as File;
    return { labels: rawNrrd(new Uint8Array(await file.arrayBuffer())), params: JSON.parse(String(parts.get('params'))) };
  }

  /** PUT /datastore/label with the labelmap as OHIF's raw label.bin; the answer carries the training count. */
  async saveLabel(image: string, voxels: Uint8Array): Promise<any> {
    const form = new FormData();
    form.append('params', JSON.stringify({ label_info: [], source: 'samlabel-ohif' }));
    form.append('label', new Blob([voxels]), 'label.bin');
    return (await this.call('datastore/label', { method: 'PUT', body: form }, { image })).json();
  }

  /** The fine-tuning run in progress (MONAI Label's task record), or null when none runs. */
  async runningTraining(): Promise<any | null> {
    const answer = await fetch(this.url('train/', { check_if_running: 'true' }));
    return answer.ok ? answer.json() : null;
  }

  /** The adapter version the server serves (a new one appears after a run passes its gate). */
  async servedAdapter(): Promise<string> {
    return (await (await this.call('adapter/versions')).json()).served;
  }

  /** The next image to label ({} when none is left): `id` is a SeriesInstanceUID. */
  async next(strategy: string): Promise<any> {
    const init = { method: 'POST', body: '{}', headers: { 'Content-Type': 'application/json' } };
    return (await this.call(`activelearning/${encodeURIComponent(strategy)}`, init)).json();
  }

  /** The study of a series, from the PACS through the server's DICOMweb proxy (OHIF opens studies). */
  async studyOf(series: string): Promise<string> {
    const found = await (await this.call('proxy/dicom/qido/series', {}, { SeriesInstanceUID: series })).json();
    return found[0]['0020000D'].Value[0];
  }
}

/** The data of an uncompressed NRRD: everything after the blank line that ends its text header. */
function rawNrrd(bytes: Uint8Array): Uint8Array {
  for (let i = 1; i < bytes.length; i++) {
    if (bytes[i] === 10 && bytes[i - 1] === 10) return bytes.subarray(i + 1);
  }
  throw new Error('the inference result is not an NRRD file');
}
