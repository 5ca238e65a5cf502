/**
 * The samlabel panel: connect to the server, pick a model and a label, prompt with points and a box (each
 * prompt runs the model with every prompt so far), save the labelmap, and open the next image.
 */
import { type InferResult, SamClient } from './client';
import { cornerstoneLibraries, React } from './ohif';
import { activateTool, COLORS, TOOLS } from './tools';
import { imageVolume, readLabelmap, toIJK, type Volume, writeResult } from './volume';

const { useEffect, useRef, useState } = React;
const STRATEGY = 'sam_uncertainty';
const POLL_MS = 5000;

type Point = { ijk: number[]; foreground: boolean };
type Box = { i: [number, number]; j: [number, number]; k: number };
type Prompts = { points: Point[]; box: Box | null; last: number };

/** The params of one request: sam_2d gets the prompts on the newest prompt's slice, sam_3d all of them. */
function inferParams(model: string, label: string, prompts: Prompts, depth: number): Record<string, any> {
  const k = prompts.last;
  const points = model === 'sam_2d' ? prompts.points.filter((p) => p.ijk[2] === k) : prompts.points;
  const params: Record<string, any> = {
    label,
    slice: k,
    foreground: points.filter((p) => p.foreground).map((p) => p.ijk),
    background: points.filter((p) => !p.foreground).map((p) => p.ijk),
  };
  const box = prompts.box;
  if (box && model === 'sam_3d') {
    params.roi = [...box.i, ...box.j, 0, depth - 1]; // the box on `slice`, propagation free over the volume
    params.slice = box.k;
  } else if (box && box.k === k) {
    params.roi = [...box.i, ...box.j, k, k];
  }
  return params;
}

/** The trigger's count in a save's answer (lib/samlabel/training/trigger.py). */
function savedText(training: any): string {
  const queued = training.run_requested ? ', a run is requested' : '';
  return `${training.saved_since_last_run} of ${training.train_every} saves toward the next run${queued}; runs started: ${training.runs_started}`;
}

export function SamPanel({ servicesManager, extensionManager }: any) {
  const services = servicesManager.services;
  const { cornerstone, cornerstoneTools } = cornerstoneLibraries(extensionManager);
  const [server, setServer] = useState(window.location.origin);
  const [info, setInfo] = useState(null as any);
  const [model, setModel] = useState('sam_2d');
  const [label, setLabel] = useState('');
  const [tool, setTool] = useState('');
  const [status, setStatus] = useState('');
  const [result, setResult] = useState(null as InferResult['params'] | null);
  const [saved, setSaved] = useState(null as any);
  const [running, setRunning] = useState(null as any);
  const [served, setServed] = useState('');
  const servedFirst = useRef(''); // the version served when the panel connected, to tell a new one
  const prompts = useRef({ points: [], box: null, last: -1 } as Prompts);
  const latest = useRef({} as any); // what the annotation listener must read at the time of the event
  const client = new SamClient(server);
  latest.current = { client, info, model, label };

  const labelValues: Record<string, number> = info?.models?.[model]?.labels ?? {};
  const labels = Object.keys(labelValues).sort((a, b) => labelValues[a] - labelValues[b]);

  function current(): { displaySet: any; volume?: Volume } {
    const { viewportGridService, displaySetService } = services;
    const viewportId = viewportGridService.getActiveViewportId();
    const uid = viewportGridService.getDisplaySetsUIDsForViewport(viewportId)?.[0];
    const displaySet = uid && displaySetService.getDisplaySetByUID(uid);
    return { displaySet, volume: displaySet && imageVolume(extensionManager, displaySet) };
  }

  /** One labelmap per image, its segment indices the server's label values; shown in every viewport of the image. */
  async function segmentationFor(displaySet: any): Promise<string> {
    const { segmentationService, viewportGridService } = services;
    const id = `samlabel-${displaySet.displaySetInstanceUID}`;
    if (!segmentationService.getSegmentation(id)) {
      const values = latest.current.info.models[latest.current.model].labels;
      const segments = Object.fromEntries(
        Object.entries(values).map(([name, value]) => [value, { label: name, segmentIndex: value }])
      );
      await segmentationService.createLabelmapForDisplaySet(displaySet, { segmentationId: id, label: 'samlabel', segments });
      for (const [viewportId, viewport] of viewportGridService.getState().viewports) {
        if (viewport.displaySetInstanceUIDs?.includes(displaySet.displaySetInstanceUID)) {
          await segmentationService.addSegmentationRepresentation(viewportId, { segmentationId: id });
        }
      }
    }
    return id;
  }

  async function runModel(): Promise<void> {
    const { client, model, label } = latest.current;
    const { displaySet, volume } = current();
    if (!volume) throw new Error('the image volume is not loaded yet');
    const params = inferParams(model, label, prompts.current, volume.dimensions[2]);
    setStatus(`${model}: running…`);
    const answer = await client.infer(model, displaySet.SeriesInstanceUID, params);
    const segmentationId = await segmentationFor(displaySet);
    writeResult(extensionManager, segmentationId, volume, answer.labels, answer.params.label_value, model === 'sam_2d' ? params.slice : undefined);
    services.segmentationService.setActiveSegment(segmentationId, answer.params.label_value);
    setResult(answer.params);
    setStatus(`${model}: ${answer.params.prompt} on slice ${answer.params.slice}, IoU ${Number(answer.params.iou).toFixed(2)}`);
  }

  function fail(error: any): void {
    setStatus(String(error?.message ?? error));
    services.uiNotificationService.show({ title: 'samlabel', message: String(error?.message ?? error), type: 'error' });
  }

  /** Each completed prompt annotation of ours becomes a click or the box, and runs the model. */
  useEffect(() => {
    const { eventTarget } = cornerstone;
    const completed = cornerstoneTools.Enums.Events.ANNOTATION_COMPLETED;
    const onCompleted = (event: any) => {
      const annotation = event.detail.annotation;
      const name = annotation.metadata.toolName;
      if (!Object.values(TOOLS).includes(name) || !latest.current.info) return;
      const { volume } = current();
      if (!volume) return fail('the image volume is not loaded yet');
      const ijk = annotation.data.handles.points.map((p: number[]) => toIJK(volume, p));
      const k = ijk[0][2];
      if (name === TOOLS.box) {
        const along = (axis: number) => [Math.min(...ijk.map((p: number[]) => p[axis])), Math.max(...ijk.map((p: number[]) => p[axis]))];
        if (prompts.current.box) removeAnnotations([TOOLS.box], annotation.annotationUID); // one box per label
        prompts.current.box = { i: along(0) as [number, number], j: along(1) as [number, number], k };
      } else {
        prompts.current.points.push({ ijk: ijk[0], foreground: name === TOOLS.foreground });
      }
      prompts.current.last = k;
      cornerstoneTools.annotation.config.style.setAnnotationStyles(annotation.annotationUID, { color: COLORS[name as keyof typeof COLORS] });
      runModel().catch(fail);
    };
    eventTarget.addEventListener(completed, onCompleted);
    return () => eventTarget.removeEventListener(completed, onCompleted);
  }, []);

  /** The served adapter version and whether a fine-tuning run is in progress, every few seconds once connected. */
  useEffect(() => {
    if (!info) return;
    const poll = () => {
      client
        .servedAdapter()
        .then((version) => {
          servedFirst.current ||= version;
          setServed(version);
        })
        .catch(() => setServed('?'));
      client.runningTraining().then(setRunning).catch(() => setRunning(null));
    };
    poll();
    const timer = setInterval(poll, POLL_MS);
    return () => clearInterval(timer);
  }, [info, server]);

  function removeAnnotations(names: string[], keep?: string): void {
    const { annotation } = cornerstoneTools;
    for (const a of annotation.state.getAllAnnotations()) {
      if (names.includes(a.metadata.toolName) && a.annotationUID !== keep) annotation.state.removeAnnotation(a.annotationUID);
    }
    cornerstone.getRenderingEngines().forEach((engine: any) => engine.render());
  }

  function clearPrompts(): void {
    prompts.current = { points: [], box: null, last: -1 };
    removeAnnotations(Object.values(TOOLS));
    setResult(null);
  }

  async function connect(): Promise<void> {
    const answer = await client.info();
    setInfo(answer);
    const names = Object.keys(answer.models?.sam_2d?.labels ?? {});
    setLabel((old: string) => old || names[0] || '');
    setStatus(`connected: ${answer.name ?? 'server'}`);
  }

  function chooseLabel(name: string): void {
    setLabel(name);
    clearPrompts();
    const { displaySet } = current();
    const id = displaySet && `samlabel-${displaySet.displaySetInstanceUID}`;
    if (id && services.segmentationService.getSegmentation(id)) services.segmentationService.setActiveSegment(id, labelValues[name]);
  }

  /** Another model runs at once on the prompts so far (sam_3d grows the sam_2d prompts through the volume). */
  function chooseModel(name: string): void {
    setModel(name);
    latest.current.model = name;
    if (prompts.current.last >= 0) runModel().catch(fail);
  }

  function chooseTool(name: string): void {
    activateTool(services.toolGroupService, cornerstoneTools, name);
    setTool(name);
  }

  async function save(): Promise<void> {
    const { displaySet, volume } = current();
    const id = displaySet && `samlabel-${displaySet.displaySetInstanceUID}`;
    if (!volume || !services.segmentationService.getSegmentation(id)) throw new Error('nothing to save: segment something first');
    setStatus('saving…');
    const answer = await client.saveLabel(displaySet.SeriesInstanceUID, readLabelmap(extensionManager, id, volume));
    setSaved(answer);
    setStatus(`saved ${displaySet.SeriesInstanceUID}`);
  }

  async function next(): Promise<void> {
    setStatus('asking for the next image…');
    const answer = await client.next(STRATEGY);
    if (!answer?.id) return setStatus('no unlabelled image left');
    const url = new URL(window.location.href);
    url.searchParams.set('StudyInstanceUIDs', await client.studyOf(answer.id));
    window.location.assign(url.toString());
  }

  const button = (text: string, onClick: () => any, active = false, disabled = false) => (
    <button
      type="button"
      disabled={disabled}
      onClick={() => Promise.resolve(onClick()).catch(fail)}
      style={{ margin: 2, padding: '3px 8px', borderRadius: 4, border: '1px solid #5acce6', opacity: disabled ? 0.5 : 1,
        background: active ? '#5acce6' : 'transparent', color: active ? '#000' : '#fff' }}
    >
      {text}
    </button>
  );
  const row = { display: 'flex', flexWrap: 'wrap' as const, alignItems: 'center', gap: 4, margin: '6px 0' };
  const select = { background: '#111', color: '#fff', border: '1px solid #555', padding: 2 };

  return (
    <div data-cy="samlabel-panel" style={{ padding: 8, color: '#fff', fontSize: 13 }}>
      <div style={row}>
        <input aria-label="Server" value={server} onChange={(e: any) => setServer(e.target.value)} style={{ ...select, flex: 1 }} />
        {button('Connect', connect)}
      </div>
      {info && (
        <>
          <div style={row}>
            <label>
              Model{' '}
              <select aria-label="Model" value={model} onChange={(e: any) => chooseModel(e.target.value)} style={select}>
                {['sam_2d', 'sam_3d'].filter((m) => info.models?.[m]).map((m) => <option key={m}>{m}</option>)}
              </select>
            </label>
            <label>
              Label{' '}
              <select aria-label="Label" value={label} onChange={(e: any) => chooseLabel(e.target.value)} style={select}>
                {labels.map((name) => <option key={name}>{name}</option>)}
              </select>
            </label>
          </div>
          <div style={row}>
            {button('Foreground point', () => chooseTool(TOOLS.foreground), tool === TOOLS.foreground)}
            {button('Background point', () => chooseTool(TOOLS.background), tool === TOOLS.background)}
            {button('Box', () => chooseTool(TOOLS.box), tool === TOOLS.box)}
            {button('Clear prompts', clearPrompts)}
          </div>
          <div style={row}>
            {button('Save label', save)}
            {button('Next image', next)}
          </div>
          <div data-cy="samlabel-result">
            {result ? `result: ${result.label} (${result.prompt}), slices ${result.slices?.join('–')}, adapter ${result.adapter_version}` : ''}
          </div>
          <div data-cy="samlabel-saved">{saved?.training ? `Last save: ${savedText(saved.training)}` : ''}</div>
          <div data-cy="samlabel-training">
            Fine-tuning: {running ? `run in progress (${running.id ?? 'started'})` : 'no run in progress'}
          </div>
          <div data-cy="samlabel-served">
            Served adapter: {served || '…'}
            {served && servedFirst.current && served !== servedFirst.current ? ' (new since this page connected)' : ''}
          </div>
        </>
      )}
      <div data-cy="samlabel-status" style={{ marginTop: 6, color: '#aaa', wordBreak: 'break-all' }}>{status}</div>
    </div>
  );
}
