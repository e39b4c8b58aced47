using System.Runtime.InteropServices;

namespace Vfio.Interop;

/// <summary>
/// Numbers from &lt;linux/vfio.h&gt; and &lt;linux/iommufd.h&gt;. Every VFIO ioctl is _IO(';', 100 + n):
/// no direction or size bits, the size travels in each struct's argsz.
/// </summary>
public static class VfioUapi
{
    /// <summary>VFIO_API_VERSION: what VFIO_GET_API_VERSION returns.</summary>
    public const int ApiVersion = VFIO_API_VERSION;
    public const int VFIO_API_VERSION = 0;
    private const uint VfioType = ';';
    private const uint VfioBase = 100;
    private static nuint Io(uint type, uint nr) => (nuint)((type << 8) | nr);

    public static readonly nuint VFIO_GET_API_VERSION = Io(VfioType, VfioBase + 0);
    public static readonly nuint VFIO_CHECK_EXTENSION = Io(VfioType, VfioBase + 1);
    public static readonly nuint VFIO_SET_IOMMU = Io(VfioType, VfioBase + 2);
    public static readonly nuint VFIO_GROUP_GET_STATUS = Io(VfioType, VfioBase + 3);
    public static readonly nuint VFIO_GROUP_SET_CONTAINER = Io(VfioType, VfioBase + 4);
    public static readonly nuint VFIO_GROUP_UNSET_CONTAINER = Io(VfioType, VfioBase + 5);
    public static readonly nuint VFIO_GROUP_GET_DEVICE_FD = Io(VfioType, VfioBase + 6);
    public static readonly nuint VFIO_DEVICE_GET_INFO = Io(VfioType, VfioBase + 7);
    public static readonly nuint VFIO_DEVICE_GET_REGION_INFO = Io(VfioType, VfioBase + 8);
    public static readonly nuint VFIO_DEVICE_GET_IRQ_INFO = Io(VfioType, VfioBase + 9);
    public static readonly nuint VFIO_DEVICE_RESET = Io(VfioType, VfioBase + 11);
    public static readonly nuint VFIO_IOMMU_MAP_DMA = Io(VfioType, VfioBase + 13);
    public static readonly nuint VFIO_IOMMU_UNMAP_DMA = Io(VfioType, VfioBase + 14);
    public static readonly nuint VFIO_DEVICE_FEATURE = Io(VfioType, VfioBase + 17);
    public static readonly nuint VFIO_DEVICE_BIND_IOMMUFD = Io(VfioType, VfioBase + 18);
    public static readonly nuint VFIO_DEVICE_ATTACH_IOMMUFD_PT = Io(VfioType, VfioBase + 19);
    public static readonly nuint VFIO_DEVICE_DETACH_IOMMUFD_PT = Io(VfioType, VfioBase + 20);
    public static readonly nuint VFIO_MIG_GET_PRECOPY_INFO = Io(VfioType, VfioBase + 21);

    private const uint IommufdType = ';';
    public const uint IOMMUFD_CMD_BASE = 0x80;
    public const uint IOMMUFD_CMD_DESTROY = IOMMUFD_CMD_BASE;
    public const uint IOMMUFD_CMD_IOAS_ALLOC = 0x81;
    public static readonly nuint IOMMU_IOAS_ALLOC = Io(IommufdType, IOMMUFD_CMD_IOAS_ALLOC);
    public static readonly nuint IOMMU_DESTROY = Io(IommufdType, IOMMUFD_CMD_DESTROY);

    public const int VFIO_TYPE1_IOMMU = 1;
    public const int VFIO_TYPE1v2_IOMMU = 3;

    public const uint VFIO_GROUP_FLAGS_VIABLE = 1 << 0;
    public const uint VFIO_GROUP_FLAGS_CONTAINER_SET = 1 << 1;

    public const uint VFIO_DEVICE_FLAGS_RESET = 1 << 0;
    public const uint VFIO_DEVICE_FLAGS_PCI = 1 << 1;
    public const uint VFIO_DEVICE_FLAGS_PLATFORM = 1 << 2;
    public const uint VFIO_DEVICE_FLAGS_AMBA = 1 << 3;
    public const uint VFIO_DEVICE_FLAGS_CCW = 1 << 4;
    public const uint VFIO_DEVICE_FLAGS_AP = 1 << 5;
    public const uint VFIO_DEVICE_FLAGS_FSL_MC = 1 << 6;
    public const uint VFIO_DEVICE_FLAGS_CAPS = 1 << 7;
    public const uint VFIO_DEVICE_FLAGS_CDX = 1 << 8;

    public const uint VFIO_REGION_INFO_FLAG_READ = 1 << 0;
    public const uint VFIO_REGION_INFO_FLAG_WRITE = 1 << 1;
    public const uint VFIO_REGION_INFO_FLAG_MMAP = 1 << 2;
    public const uint VFIO_REGION_INFO_FLAG_CAPS = 1 << 3;

    public const uint VFIO_PCI_BAR0_REGION_INDEX = 0;
    public const uint VFIO_PCI_BAR1_REGION_INDEX = 1;
    public const uint VFIO_PCI_BAR2_REGION_INDEX = 2;
    public const uint VFIO_PCI_BAR3_REGION_INDEX = 3;
    public const uint VFIO_PCI_BAR4_REGION_INDEX = 4;
    public const uint VFIO_PCI_BAR5_REGION_INDEX = 5;
    public const uint VFIO_PCI_ROM_REGION_INDEX = 6;
    public const uint VFIO_PCI_CONFIG_REGION_INDEX = 7;
    public const uint VFIO_PCI_VGA_REGION_INDEX = 8;
    public const uint VFIO_PCI_NUM_REGIONS = 9;

    public const uint VFIO_IRQ_INFO_EVENTFD = 1 << 0;
    public const uint VFIO_IRQ_INFO_MASKABLE = 1 << 1;
    public const uint VFIO_IRQ_INFO_AUTOMASKED = 1 << 2;
    public const uint VFIO_IRQ_INFO_NORESIZE = 1 << 3;
    public const uint VFIO_PCI_INTX_IRQ_INDEX = 0;
    public const uint VFIO_PCI_MSI_IRQ_INDEX = 1;
    public const uint VFIO_PCI_MSIX_IRQ_INDEX = 2;
    public const uint VFIO_PCI_ERR_IRQ_INDEX = 3;
    public const uint VFIO_PCI_REQ_IRQ_INDEX = 4;
    public const uint VFIO_PCI_NUM_IRQS = 5;

    public const uint VFIO_DMA_MAP_FLAG_READ = 1 << 0;
    public const uint VFIO_DMA_MAP_FLAG_WRITE = 1 << 1;

    public const uint VFIO_DEVICE_FEATURE_MASK = 0xffff;
    public const uint VFIO_DEVICE_FEATURE_GET = 1 << 16;
    public const uint VFIO_DEVICE_FEATURE_SET = 1 << 17;
    public const uint VFIO_DEVICE_FEATURE_PROBE = 1 << 18;

    public const uint VFIO_DEVICE_FEATURE_MIGRATION = 1;
    public const uint VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE = 2;
    public const uint VFIO_DEVICE_FEATURE_DMA_LOGGING_START = 6;
    public const uint VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP = 7;
    public const uint VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT = 8;
    public const uint VFIO_DEVICE_FEATURE_MIG_DATA_SIZE = 9;

    public const ulong VFIO_MIGRATION_STOP_COPY = 1 << 0;
    public const ulong VFIO_MIGRATION_P2P = 1 << 1;
    public const ulong VFIO_MIGRATION_PRE_COPY = 1 << 2;

    public const uint VFIO_DEVICE_STATE_ERROR = 0;
    public const uint VFIO_DEVICE_STATE_STOP = 1;
    public const uint VFIO_DEVICE_STATE_RUNNING = 2;
    public const uint VFIO_DEVICE_STATE_STOP_COPY = 3;
    public const uint VFIO_DEVICE_STATE_RESUMING = 4;
    public const uint VFIO_DEVICE_STATE_RUNNING_P2P = 5;
    public const uint VFIO_DEVICE_STATE_PRE_COPY = 6;
    public const uint VFIO_DEVICE_STATE_PRE_COPY_P2P = 7;
    public const uint VFIO_DEVICE_STATE_NR = 8;
}

[StructLayout(LayoutKind.Sequential)]
public struct VfioGroupStatus
{
    public uint Argsz;
    public uint Flags;
}

[StructLayout(LayoutKind.Sequential)]
public struct VfioDeviceInfo
{
    public uint Argsz;
    public uint Flags;
    public uint NumRegions;
    public uint NumIrqs;
    public uint CapOffset;
    public uint Pad;
}

[StructLayout(LayoutKind.Sequential)]
public struct VfioRegionInfo
{
    public uint Argsz;
    public uint Flags;
    public uint Index;
    public uint CapOffset;
    public ulong Size;
    public ulong Offset;
}

[StructLayout(LayoutKind.Sequential)]
public struct VfioIrqInfo
{
    public uint Argsz;
    public uint Flags;
    public uint Index;
    public uint Count;
}

[StructLayout(LayoutKind.Sequential)]
public struct VfioIommuType1DmaMap
{
    public uint Argsz;
    public uint Flags;
    public ulong Vaddr;
    public ulong Iova;
    public ulong Size;
}

/// <summary>VFIO_IOMMU_UNMAP_DMA's argument without its trailing data[] (a dirty bitmap, unused here).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct VfioIommuType1DmaUnmap
{
    public uint Argsz;
    public uint Flags;
    public ulong Iova;
    public ulong Size;
}

/// <summary>Header of VFIO_DEVICE_FEATURE; the feature's payload follows at offset 8.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct VfioDeviceFeature
{
    public uint Argsz;
    public uint Flags;
}

[StructLayout(LayoutKind.Sequential)]
public struct VfioDeviceFeatureMigration
{
    public ulong Flags;
}

[StructLayout(LayoutKind.Sequential)]
public struct VfioDeviceFeatureMigState
{
    public uint DeviceState;
    public int DataFd;
}

[StructLayout(LayoutKind.Sequential)]
public struct VfioDeviceFeatureMigDataSize
{
    public ulong StopCopyLength;
}

[StructLayout(LayoutKind.Sequential)]
public struct VfioPrecopyInfo
{
    public uint Argsz;
    public uint Flags;
    public ulong InitialBytes;
    public ulong DirtyBytes;
}

[StructLayout(LayoutKind.Sequential)]
public struct VfioDeviceBindIommufd
{
    public uint Argsz;
    public uint Flags;
    public int Iommufd;
    public uint OutDevid;
}

[StructLayout(LayoutKind.Sequential)]
public struct VfioDeviceAttachIommufdPt
{
    public uint Argsz;
    public uint Flags;
    public uint PtId;
}

[StructLayout(LayoutKind.Sequential)]
public struct VfioDeviceDetachIommufdPt
{
    public uint Argsz;
    public uint Flags;
}

[StructLayout(LayoutKind.Sequential)]
public struct IommuDestroy
{
    public uint Size;
    public uint Id;
}

[StructLayout(LayoutKind.Sequential)]
public struct IommuIoasAlloc
{
    public uint Size;
    public uint Flags;
    public uint OutIoasId;
}

[StructLayout(LayoutKind.Sequential)]
public struct VfioDeviceFeatureDmaLoggingControl
{
    public ulong PageSize;
    public uint NumRanges;
    public uint Reserved;
    public ulong Ranges;
}

[StructLayout(LayoutKind.Sequential)]
public struct VfioDeviceFeatureDmaLoggingRange
{
    public ulong Iova;
    public ulong Length;
}

[StructLayout(LayoutKind.Sequential)]
public struct VfioDeviceFeatureDmaLoggingReport
{
    public ulong Iova;
    public ulong Length;
    public ulong PageSize;
    public ulong Bitmap;
}
