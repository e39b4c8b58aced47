using System.Runtime.InteropServices;
using Vfio.Interop;

namespace Vfio.Core;

/// <summary>A legacy VFIO container (/dev/vfio/vfio): groups are attached to it, then it gets an IOMMU model.</summary>
public sealed class VfioContainer : IDisposable
{
    private VfioContainer(FileDescriptorHandle handle, VfioHostPaths paths)
    {
        Handle = handle;
        Paths = paths;
    }

    public FileDescriptorHandle Handle { get; }

    public VfioHostPaths Paths { get; }

    /// <summary>The IOMMU model set with <see cref="SetIommu"/>, or null before.</summary>
    public int? IommuType { get; private set; }

    /// <summary>Opens /dev/vfio/vfio and checks VFIO_GET_API_VERSION.</summary>
    public static VfioContainer Open(VfioHostPaths? paths = null)
    {
        paths ??= VfioHostPaths.Default;
        if (!paths.HasVfio)
            throw DeviceNodes.NoVfio(paths);
        var handle = DeviceNodes.OpenNode(paths.ContainerNode, "the VFIO container", paths);
        var container = new VfioContainer(handle, paths);
        try
        {
            int version = Libc.IoctlValue(handle, VfioUapi.VFIO_GET_API_VERSION, 0);
            if (version < 0)
                throw VfioException.FromLastError($"VFIO_GET_API_VERSION on {paths.ContainerNode}");
            if (version != VfioUapi.VFIO_API_VERSION)
                throw new VfioException($"VFIO_GET_API_VERSION on {paths.ContainerNode}", 0,
                    $"the kernel speaks VFIO API {version}, this tool speaks {VfioUapi.VFIO_API_VERSION}");
            return container;
        }
        catch
        {
            container.Dispose();
            throw;
        }
    }

    /// <summary>VFIO_CHECK_EXTENSION: whether the kernel offers an IOMMU model or extension (e.g. VFIO_TYPE1v2_IOMMU).</summary>
    public bool CheckExtension(int extension)
    {
        int r = Libc.IoctlValue(Handle, VfioUapi.VFIO_CHECK_EXTENSION, extension);
        if (r < 0)
            throw VfioException.FromLastError($"VFIO_CHECK_EXTENSION({extension})");
        return r > 0;
    }

    /// <summary>VFIO_SET_IOMMU; needs at least one group attached. Does nothing when already set.</summary>
    public void SetIommu(int type = VfioUapi.VFIO_TYPE1v2_IOMMU)
    {
        if (IommuType is not null)
            return;
        if (!CheckExtension(type))
            throw new VfioException($"VFIO_CHECK_EXTENSION({type})", 0,
                $"the kernel does not offer IOMMU model {type} (is the host IOMMU enabled: intel_iommu=on / amd_iommu?)");
        if (Libc.IoctlValue(Handle, VfioUapi.VFIO_SET_IOMMU, type) < 0)
            throw VfioException.FromLastError($"VFIO_SET_IOMMU({type})");
        IommuType = type;
    }

    /// <summary>
    /// VFIO_IOMMU_MAP_DMA: lets the container's devices reach <paramref name="size"/> bytes of this process's memory at
    /// <paramref name="vaddr"/> through IO virtual address <paramref name="iova"/> (the kernel pins the pages). Both page
    /// aligned; the memory must stay allocated until <see cref="UnmapDma"/> (or the container closes).
    /// </summary>
    public unsafe void MapDma(nint vaddr, ulong iova, ulong size, bool deviceReads = true, bool deviceWrites = true)
    {
        var map = new VfioIommuType1DmaMap
        {
            Argsz = (uint)sizeof(VfioIommuType1DmaMap), Vaddr = (ulong)vaddr, Iova = iova, Size = size,
            Flags = (deviceReads ? VfioUapi.VFIO_DMA_MAP_FLAG_READ : 0) | (deviceWrites ? VfioUapi.VFIO_DMA_MAP_FLAG_WRITE : 0),
        };
        // &map: stack memory of this frame; the kernel reads it during the call (vaddr is the caller's to keep valid).
        if (Libc.Ioctl(Handle, VfioUapi.VFIO_IOMMU_MAP_DMA, &map) < 0)
            throw VfioException.FromLastError($"VFIO_IOMMU_MAP_DMA(iova 0x{iova:x}, {size} bytes)",
                IommuType is null ? "no IOMMU model is set on the container (SetIommu after attaching a group)" : null);
    }

    /// <summary>VFIO_IOMMU_UNMAP_DMA of a range mapped before; returns the bytes the kernel unmapped.</summary>
    public unsafe ulong UnmapDma(ulong iova, ulong size)
    {
        var unmap = new VfioIommuType1DmaUnmap { Argsz = (uint)sizeof(VfioIommuType1DmaUnmap), Iova = iova, Size = size };
        // &unmap: stack memory of this frame; the kernel writes back the size it unmapped.
        if (Libc.Ioctl(Handle, VfioUapi.VFIO_IOMMU_UNMAP_DMA, &unmap) < 0)
            throw VfioException.FromLastError($"VFIO_IOMMU_UNMAP_DMA(iova 0x{iova:x}, {size} bytes)");
        return unmap.Size;
    }

    public void Dispose() => Handle.Dispose();
}

/// <summary>A VFIO group (/dev/vfio/&lt;N&gt;): the unit of ownership; its devices are opened through it.</summary>
public sealed class VfioGroup : IDisposable
{
    private VfioContainer? _container;

    private VfioGroup(int id, FileDescriptorHandle handle, VfioHostPaths paths)
    {
        Id = id;
        Handle = handle;
        Paths = paths;
    }

    public int Id { get; }

    public FileDescriptorHandle Handle { get; }

    public VfioHostPaths Paths { get; }

    /// <summary>The container this group was attached to by <see cref="SetContainer"/>.</summary>
    public VfioContainer? Container => _container;

    public static VfioGroup Open(int id, VfioHostPaths? paths = null)
    {
        paths ??= VfioHostPaths.Default;
        if (!paths.HasVfio)
            throw DeviceNodes.NoVfio(paths);
        var node = paths.GroupNode(id);
        if (!File.Exists(node))
            throw new VfioException($"open {node}", Libc.ENOENT,
                $"IOMMU group {id} has no {node}: no device of the group is bound to a VFIO driver (vfio-pci or a variant such as mlx5_vfio_pci)");
        return new VfioGroup(id, DeviceNodes.OpenNode(node, $"IOMMU group {id}", paths), paths);
    }

    /// <summary>VFIO_GROUP_GET_STATUS flags (VIABLE, CONTAINER_SET).</summary>
    public unsafe uint GetStatusFlags()
    {
        var status = new VfioGroupStatus { Argsz = (uint)sizeof(VfioGroupStatus) };
        // &status: stack memory of this frame.
        if (Libc.Ioctl(Handle, VfioUapi.VFIO_GROUP_GET_STATUS, &status) < 0)
            throw VfioException.FromLastError($"VFIO_GROUP_GET_STATUS on group {Id}");
        return status.Flags;
    }

    /// <summary>Every device of the group is bound to a VFIO driver or to none.</summary>
    public bool IsViable => (GetStatusFlags() & VfioUapi.VFIO_GROUP_FLAGS_VIABLE) != 0;

    /// <summary>
    /// VFIO_GROUP_SET_CONTAINER, then VFIO_SET_IOMMU(TYPE1v2) on the container if not yet set. Throws a
    /// "group not viable" error naming the devices and drivers that stand in the way.
    /// </summary>
    public unsafe void SetContainer(VfioContainer container)
    {
        var flags = GetStatusFlags();
        if ((flags & VfioUapi.VFIO_GROUP_FLAGS_VIABLE) == 0)
            throw new VfioException($"VFIO_GROUP_GET_STATUS on group {Id}", 0, NotViableMessage(Id, Paths));
        if ((flags & VfioUapi.VFIO_GROUP_FLAGS_CONTAINER_SET) == 0)
        {
            using var containerFd = new BorrowedFd(container.Handle);
            int fd = containerFd.Fd;
            // &fd: stack memory of this frame; the number stays the container's while containerFd holds it.
            if (Libc.Ioctl(Handle, VfioUapi.VFIO_GROUP_SET_CONTAINER, &fd) < 0)
                throw VfioException.FromLastError($"VFIO_GROUP_SET_CONTAINER on group {Id}");
        }
        _container = container;
        container.SetIommu();
    }

    /// <summary>VFIO_GROUP_GET_DEVICE_FD for a PCI address or mdev UUID in this group.</summary>
    public unsafe FileDescriptorHandle OpenDeviceFd(string name)
    {
        var bytes = new byte[System.Text.Encoding.UTF8.GetByteCount(name) + 1];
        System.Text.Encoding.UTF8.GetBytes(name, bytes);
        int fd;
        // p: the NUL-terminated name, pinned by fixed for the ioctl.
        fixed (byte* p = bytes)
            fd = Libc.Ioctl(Handle, VfioUapi.VFIO_GROUP_GET_DEVICE_FD, p);
        if (fd >= 0)
            return new FileDescriptorHandle(fd);
        int errno = Marshal.GetLastPInvokeError();
        var op = $"VFIO_GROUP_GET_DEVICE_FD({name}) on group {Id}";
        throw errno switch
        {
            Libc.EBUSY => new VfioException(op, errno,
                $"device {name} is busy: it is already open (by another process such as QEMU, or by this one)"),
            Libc.ENODEV => new VfioException(op, errno, $"device {name} is not in IOMMU group {Id}"),
            Libc.EINVAL when _container is null => new VfioException(op, errno, "the group has no container with an IOMMU set"),
            _ => new VfioException(op, errno),
        };
    }

    /// <summary>Why a group is not viable, naming the devices of the group that are bound to a non-VFIO driver.</summary>
    internal static string NotViableMessage(int id, VfioHostPaths paths)
    {
        var members = VfioSysfs.GroupMembers(id, paths);
        var blockers = members.Where(m => m.Driver is not null && !VfioSysfs.IsVfioDriverName(m.Driver))
            .Select(m => $"{m.Name} (driver {m.Driver})").ToArray();
        var message = $"IOMMU group {id} is not viable: every device in it must be bound to a VFIO driver or to none";
        return blockers.Length > 0
            ? $"{message}, but {string.Join(", ", blockers)} {(blockers.Length == 1 ? "is" : "are")} not"
            : message;
    }

    public void Dispose() => Handle.Dispose();
}

/// <summary>An iommufd context (/dev/iommu) for the cdev path: devices bind to it and attach to an IOAS.</summary>
public sealed class Iommufd : IDisposable
{
    private Iommufd(FileDescriptorHandle handle) => Handle = handle;

    public FileDescriptorHandle Handle { get; }

    /// <summary>Whether /dev/iommu exists.</summary>
    public static bool IsAvailable(VfioHostPaths? paths = null) => File.Exists((paths ?? VfioHostPaths.Default).IommufdNode);

    public static Iommufd Open(VfioHostPaths? paths = null)
    {
        paths ??= VfioHostPaths.Default;
        if (!File.Exists(paths.IommufdNode))
            throw new VfioException($"open {paths.IommufdNode}", Libc.ENOENT,
                "no /dev/iommu: the kernel has no iommufd (CONFIG_IOMMUFD); use the group/container path");
        return new Iommufd(DeviceNodes.OpenNode(paths.IommufdNode, "iommufd", paths));
    }

    /// <summary>IOMMU_IOAS_ALLOC: a new I/O address space; returns its id.</summary>
    public unsafe uint AllocIoas()
    {
        var alloc = new IommuIoasAlloc { Size = (uint)sizeof(IommuIoasAlloc) };
        // &alloc: stack memory of this frame.
        if (Libc.Ioctl(Handle, VfioUapi.IOMMU_IOAS_ALLOC, &alloc) < 0)
            throw VfioException.FromLastError("IOMMU_IOAS_ALLOC");
        return alloc.OutIoasId;
    }

    /// <summary>IOMMU_DESTROY of an object (IOAS, HWPT) by id.</summary>
    public unsafe void Destroy(uint id)
    {
        var destroy = new IommuDestroy { Size = (uint)sizeof(IommuDestroy), Id = id };
        // &destroy: stack memory of this frame.
        if (Libc.Ioctl(Handle, VfioUapi.IOMMU_DESTROY, &destroy) < 0)
            throw VfioException.FromLastError($"IOMMU_DESTROY({id})");
    }

    public void Dispose() => Handle.Dispose();
}
