/** The prompt tools: cornerstone's probe and rectangle tools under names of their own, so their annotations are ours. */
export const TOOLS = { foreground: 'SamForeground', background: 'SamBackground', box: 'SamBox' } as const;
export const COLORS = { SamForeground: 'rgb(0, 220, 0)', SamBackground: 'rgb(255, 60, 60)', SamBox: 'rgb(255, 200, 0)' };
const TOOL_GROUPS = ['default', 'mpr'];

export function registerTools(cornerstoneTools: any): void {
  const { ProbeTool, RectangleROITool, addTool } = cornerstoneTools;
  class SamForeground extends ProbeTool {
    static toolName = TOOLS.foreground;
  }
  class SamBackground extends ProbeTool {
    static toolName = TOOLS.background;
  }
  class SamBox extends RectangleROITool {
    static toolName = TOOLS.box;
  }
  [SamForeground, SamBackground, SamBox].forEach((tool) => addTool(tool));
}

/** Adds the tools to the mode's tool groups, passive so that their annotations stay drawn. */
export function addToolsToGroups(toolGroupService: any): void {
  for (const group of TOOL_GROUPS.map((id) => toolGroupService.getToolGroup(id)).filter(Boolean)) {
    for (const name of Object.values(TOOLS)) {
      group.addTool(name, { getTextLines: () => [] });
      group.setToolPassive(name);
    }
  }
}

/** Puts `toolName` on the left mouse button in every tool group, in place of whatever was there. */
export function activateTool(toolGroupService: any, cornerstoneTools: any, toolName: string): void {
  const primary = cornerstoneTools.Enums.MouseBindings.Primary;
  for (const group of TOOL_GROUPS.map((id) => toolGroupService.getToolGroup(id)).filter(Boolean)) {
    const current = group.getActivePrimaryMouseButtonTool();
    if (current && current !== toolName) group.setToolPassive(current);
    group.setToolActive(toolName, { bindings: [{ mouseButton: primary }] });
  }
}
