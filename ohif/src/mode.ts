/**
 * The samlabel mode: OHIF's segmentation mode (its editable labelmap panel and tools) in the MPR layout, with the
 * samlabel panel first on the left and the SAM prompt tools in its tool groups.
 */
import { PANEL } from './ids';
import { addToolsToGroups } from './tools';

const ID = 'samlabel';
const EXTENSION_URL = new URL('./extension.js', import.meta.url).pathname; // OHIF imports mode dependencies by this key

export default {
  id: ID,
  async modeFactory({ modeConfiguration, loadModules }: any) {
    const [segmentation] = await loadModules(['@ohif/mode-segmentation']);
    const base = segmentation.modeFactory.call(segmentation, { modeConfiguration });
    const [route] = base.routes;
    const props = route.layoutInstance.props;
    return {
      ...base,
      id: ID,
      routeName: ID,
      displayName: 'samlabel (SAM)',
      hangingProtocol: 'mpr', // volume viewports: prompts and results are voxel indices of one image volume
      extensions: { ...base.extensions, [EXTENSION_URL]: '^0.1.0' },
      routes: [{ ...route, layoutInstance: { ...route.layoutInstance, props: { ...props, leftPanels: [PANEL, ...props.leftPanels] } } }],
      onModeEnter(context: any) {
        base.onModeEnter.call(this, context);
        addToolsToGroups(context.servicesManager.services.toolGroupService);
      },
    };
  },
};
