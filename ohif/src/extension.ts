/** The samlabel OHIF extension: SAM prompt tools and the samlabel panel (connect, label, prompts, save, next). */
import { EXTENSION_ID } from './ids';
import { cornerstoneLibraries, React } from './ohif';
import { SamPanel } from './SamPanel';
import { registerTools } from './tools';

export default {
  id: EXTENSION_ID,
  preRegistration({ extensionManager }: any) {
    registerTools(cornerstoneLibraries(extensionManager).cornerstoneTools);
  },
  getPanelModule({ servicesManager, extensionManager }: any) {
    const component = () => React.createElement(SamPanel, { servicesManager, extensionManager });
    return [{ name: 'samlabel', iconName: 'tab-segmentation', iconLabel: 'SAM', label: 'samlabel', component }];
  },
};
