/**
 * Between cornerstone and the server: prompts in IJK voxel indices, the labelmap as one uint8 volume in
 * the server's voxel order (index i + I*j + I*J*k, slices in the image volume's order).
 */
import { cornerstoneLibraries } from './ohif';

export type Volume = { imageIds: string[]; dimensions: [number, number, number]; imageData: any };

/** The loaded image volume of a display set (the one the MPR viewports show). */
export function imageVolume(extensionManager: any, displaySet: any): Volume | undefined {
  const { cornerstone } = cornerstoneLibraries(extensionManager);
  const first = displaySet.imageIds?.[0];
  return cornerstone.cache.getVolumes().find((v: any) => !v.referencedVolumeId && v.imageIds?.includes(first));
}

/** A world point (LPS, mm) as a voxel [i, j, k], rounded as MONAI Label's OHIF extension does. */
export function toIJK(volume: Volume, world: number[]): number[] {
  return Array.from(volume.imageData.worldToIndex(world) as number[]).map(Math.round);
}

/** The labelmap image of each slice k of the image volume (OHIF keeps a labelmap as one image per slice). */
function labelmapSlices(extensionManager: any, segmentationId: string, volume: Volume): any[] {
  const { cornerstone, cornerstoneTools } = cornerstoneLibraries(extensionManager);
  const segmentation = cornerstoneTools.segmentation.state.getSegmentation(segmentationId);
  const byReference = new Map<string, any>();
  for (const id of segmentation.representationData.Labelmap.imageIds) {
    const image = cornerstone.cache.getImage(id);
    byReference.set(image.referencedImageId, image);
  }
  return volume.imageIds.map((id) => byReference.get(id));
}

/** Puts a result's voxels of `value` into the labelmap, on slice `onlySlice` or everywhere; other labels stay. */
export function writeResult(
  extensionManager: any,
  segmentationId: string,
  volume: Volume,
  result: Uint8Array,
  value: number,
  onlySlice?: number
): void {
  const { cornerstoneTools } = cornerstoneLibraries(extensionManager);
  const [I, J] = volume.dimensions;
  const slices = labelmapSlices(extensionManager, segmentationId, volume);
  slices.forEach((image, k) => {
    if (onlySlice !== undefined && k !== onlySlice) return;
    const data = image.voxelManager.getScalarData();
    const offset = k * I * J;
    for (let p = 0; p < I * J; p++) {
      if (result[offset + p] === value) data[p] = value;
      else if (data[p] === value) data[p] = 0;
    }
  });
  cornerstoneTools.segmentation.triggerSegmentationEvents.triggerSegmentationDataModified(segmentationId);
}

/** The labelmap as label.bin: segment indices are the server's label values, so the voxels go as they are. */
export function readLabelmap(extensionManager: any, segmentationId: string, volume: Volume): Uint8Array {
  const [I, J, K] = volume.dimensions;
  const voxels = new Uint8Array(I * J * K);
  labelmapSlices(extensionManager, segmentationId, volume).forEach((image, k) =>
    voxels.set(image.voxelManager.getScalarData(), k * I * J)
  );
  return voxels;
}
