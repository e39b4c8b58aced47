using System.Buffers.Binary;
using System.Runtime.InteropServices;
using Vfio.Interop;

namespace Vfio.Core;

/// <summary>How a device fd is obtained.</summary>
public enum VfioOpenMode
{
    /// <summary>The group/container path when /dev/vfio/&lt;group&gt; exists, else the cdev/iommufd path.</summary>
    Auto,
    /// <summary>/dev/vfio/vfio + /dev/vfio/&lt;group&gt; + VFIO_GROUP_GET_DEVICE_FD.</summary>
    Group,
    /// <summary>/dev/vfio/devices/vfioN bound to /dev/iommu, attached to a fresh IOAS.</summary>
    Cdev,
}

/// <summary>VFIO_DEVICE_GET_INFO.</summary>
public readonly record struct VfioDeviceInformation(uint Flags, uint NumRegions, uint NumIrqs)
{
    public bool IsPci => (Flags & VfioUapi.VFIO_DEVICE_FLAGS_PCI) != 0;
    public bool SupportsReset => (Flags & VfioUapi.VFIO_DEVICE_FLAGS_RESET) != 0;
}

/// <summary>VFIO_DEVICE_GET_REGION_INFO: one region of the device fd.</summary>
/// <summary>One interrupt index of a device: its flags and how many vectors it has (0: not supported).</summary>
public readonly record struct VfioIrq(uint Index, uint Flags, uint Count)
{
    public bool UsesEventfd => (Flags & VfioUapi.VFIO_IRQ_INFO_EVENTFD) != 0;
    public bool CanMask => (Flags & VfioUapi.VFIO_IRQ_INFO_MASKABLE) != 0;

    public string Name => Index switch
    {
        VfioUapi.VFIO_PCI_INTX_IRQ_INDEX => "INTx",
        VfioUapi.VFIO_PCI_MSI_IRQ_INDEX => "MSI",
        VfioUapi.VFIO_PCI_MSIX_IRQ_INDEX => "MSI-X",
        VfioUapi.VFIO_PCI_ERR_IRQ_INDEX => "ERR",
        VfioUapi.VFIO_PCI_REQ_IRQ_INDEX => "REQ",
        _ => $"IRQ{Index}",
    };
}

public readonly record struct VfioRegion(uint Index, uint Flags, ulong Size, ulong Offset)
{
    public bool CanRead => (Flags & VfioUapi.VFIO_REGION_INFO_FLAG_READ) != 0;
    public bool CanWrite => (Flags & VfioUapi.VFIO_REGION_INFO_FLAG_WRITE) != 0;
    public bool CanMmap => (Flags & VfioUapi.VFIO_REGION_INFO_FLAG_MMAP) != 0;

    /// <summary>The vfio-pci name of the index (BAR0..BAR5, ROM, CONFIG, VGA), or "REGION n".</summary>
    public string Name => Index switch
    {
        <= VfioUapi.VFIO_PCI_BAR5_REGION_INDEX => $"BAR{Index}",
        VfioUapi.VFIO_PCI_ROM_REGION_INDEX => "ROM",
        VfioUapi.VFIO_PCI_CONFIG_REGION_INDEX => "CONFIG",
        VfioUapi.VFIO_PCI_VGA_REGION_INDEX => "VGA",
        _ => $"REGION {Index}",
    };
}

/// <summary>
/// An open VFIO device: its fd and whatever it was opened through (group and container, or iommufd), all
/// owned by SafeHandles and closed on <see cref="Dispose"/>.
/// </summary>
public sealed class VfioDevice : IDisposable
{
    private readonly VfioGroup? _ownedGroup;
    private readonly VfioContainer? _ownedContainer;
    private readonly Iommufd? _ownedIommufd;
    private VfioDeviceInformation? _info;

    private VfioDevice(string name, FileDescriptorHandle handle, VfioSysfsDevice? sysfs, VfioOpenMode mode,
        VfioGroup? group, VfioContainer? container, Iommufd? iommufd)
    {
        Name = name;
        Handle = handle;
        Sysfs = sysfs;
        OpenedVia = mode;
        Group = group;
        _ownedGroup = group;
        _ownedContainer = container;
        _ownedIommufd = iommufd;
    }

    /// <summary>The PCI address or mdev UUID.</summary>
    public string Name { get; }

    public FileDescriptorHandle Handle { get; }

    /// <summary>What sysfs said about the device when it was opened.</summary>
    public VfioSysfsDevice? Sysfs { get; }

    /// <summary><see cref="VfioOpenMode.Group"/> or <see cref="VfioOpenMode.Cdev"/>.</summary>
    public VfioOpenMode OpenedVia { get; }

    /// <summary>The group the device was opened through (group path only).</summary>
    public VfioGroup? Group { get; }

    /// <summary>The container the device's group was attached to, when the device owns it (group path only).</summary>
    public VfioContainer? Container => _ownedContainer;

    /// <summary>The iommufd the device is bound to (cdev path only).</summary>
    public Iommufd? Iommufd => _ownedIommufd;

    /// <summary>The iommufd device id (cdev path only).</summary>
    public uint? IommufdDeviceId { get; private set; }

    /// <summary>
    /// Opens a device by PCI address (0000:af:00.2) or mdev UUID: finds its IOMMU group in sysfs, checks that
    /// a VFIO driver has it, and opens it through a new container and group (or, on kernels with only the
    /// cdev path, through /dev/vfio/devices/vfioN and /dev/iommu). Errors say what is wrong in plain words.
    /// </summary>
    public static VfioDevice Open(string name, VfioHostPaths? paths = null, VfioOpenMode mode = VfioOpenMode.Auto)
    {
        paths ??= VfioHostPaths.Default;
        var sysfs = VfioSysfs.Resolve(name, paths);
        if (!sysfs.IsVfioBound)
        {
            var why = sysfs.Driver is null
                ? $"{sysfs.Name} is not bound to any driver"
                : $"{sysfs.Name} is bound to driver {sysfs.Driver}";
            throw new VfioException($"open {sysfs.Name}", Libc.ENODEV,
                $"{why}; it must be bound to vfio-pci or a vfio-pci variant driver such as mlx5_vfio_pci");
        }
        if (!paths.HasVfio)
            throw DeviceNodes.NoVfio(paths);
        if (mode == VfioOpenMode.Auto)
        {
            bool groupNode = sysfs.IommuGroup is int g && File.Exists(paths.GroupNode(g));
            bool cdev = sysfs.CdevName is string c && File.Exists(paths.CdevNode(c)) && Iommufd.IsAvailable(paths);
            mode = groupNode || !cdev ? VfioOpenMode.Group : VfioOpenMode.Cdev;
        }
        return mode == VfioOpenMode.Cdev ? OpenCdev(sysfs, paths) : OpenThroughGroup(sysfs, paths);
    }

    /// <summary>Opens a device of a group the caller owns (and keeps owning: the device does not close it).</summary>
    public static VfioDevice OpenInGroup(VfioGroup group, string name)
    {
        var handle = group.OpenDeviceFd(name);
        return new VfioDevice(name, handle, null, VfioOpenMode.Group, null, null, null);
    }

    private static VfioDevice OpenThroughGroup(VfioSysfsDevice sysfs, VfioHostPaths paths)
    {
        if (sysfs.IommuGroup is not int groupId)
            throw new VfioException($"open {sysfs.Name}", Libc.ENODEV,
                $"{sysfs.Name} has no IOMMU group ({Path.Combine(sysfs.SysfsPath, "iommu_group")} is missing): "
                + "enable the IOMMU (intel_iommu=on) or use an mdev");
        VfioContainer? container = null;
        VfioGroup? group = null;
        try
        {
            group = VfioGroup.Open(groupId, paths);
            container = VfioContainer.Open(paths);
            group.SetContainer(container);
            var handle = group.OpenDeviceFd(sysfs.Name);
            return new VfioDevice(sysfs.Name, handle, sysfs, VfioOpenMode.Group, group, container, null);
        }
        catch
        {
            group?.Dispose();
            container?.Dispose();
            throw;
        }
    }

    private static unsafe VfioDevice OpenCdev(VfioSysfsDevice sysfs, VfioHostPaths paths)
    {
        if (sysfs.CdevName is not string cdevName)
            throw new VfioException($"open {sysfs.Name}", Libc.ENODEV,
                $"{sysfs.Name} has no vfio-dev node in sysfs: the kernel has no VFIO device cdev; use the group path");
        Iommufd? iommufd = null;
        FileDescriptorHandle? handle = null;
        try
        {
            iommufd = Iommufd.Open(paths);
            handle = DeviceNodes.OpenNode(paths.CdevNode(cdevName), $"device {sysfs.Name} ({cdevName})", paths);
            var device = new VfioDevice(sysfs.Name, handle, sysfs, VfioOpenMode.Cdev, null, null, iommufd);
            device.IommufdDeviceId = Bind(handle, iommufd, sysfs.Name);
            uint ioas = iommufd.AllocIoas();
            var attach = new VfioDeviceAttachIommufdPt { Argsz = (uint)sizeof(VfioDeviceAttachIommufdPt), PtId = ioas };
            // &attach: stack memory of this frame.
            if (Libc.Ioctl(handle, VfioUapi.VFIO_DEVICE_ATTACH_IOMMUFD_PT, &attach) < 0)
                throw VfioException.FromLastError($"VFIO_DEVICE_ATTACH_IOMMUFD_PT({ioas}) on {sysfs.Name}");
            return device;
        }
        catch
        {
            handle?.Dispose();
            iommufd?.Dispose();
            throw;
        }
    }

    /// <summary>VFIO_DEVICE_BIND_IOMMUFD; returns the iommufd device id.</summary>
    private static unsafe uint Bind(FileDescriptorHandle device, Iommufd iommufd, string name)
    {
        using var iommufdFd = new BorrowedFd(iommufd.Handle);
        var bind = new VfioDeviceBindIommufd { Argsz = (uint)sizeof(VfioDeviceBindIommufd), Iommufd = iommufdFd.Fd };
        // &bind: stack memory of this frame; its iommufd number stays the iommufd's while iommufdFd holds it.
        if (Libc.Ioctl(device, VfioUapi.VFIO_DEVICE_BIND_IOMMUFD, &bind) < 0)
        {
            int errno = Marshal.GetLastPInvokeError();
            throw new VfioException($"VFIO_DEVICE_BIND_IOMMUFD on {name}", errno,
                errno == Libc.EBUSY ? "device busy: it is already bound (open elsewhere)" : null);
        }
        return bind.OutDevid;
    }

    // ---- info and regions -------------------------------------------------------------------------

    /// <summary>VFIO_DEVICE_GET_INFO (cached).</summary>
    public VfioDeviceInformation Info => _info ??= QueryInfo();

    private unsafe VfioDeviceInformation QueryInfo()
    {
        var info = new VfioDeviceInfo { Argsz = (uint)sizeof(VfioDeviceInfo) };
        // &info: stack memory of this frame.
        if (Libc.Ioctl(Handle, VfioUapi.VFIO_DEVICE_GET_INFO, &info) < 0)
            throw VfioException.FromLastError($"VFIO_DEVICE_GET_INFO on {Name}");
        return new VfioDeviceInformation(info.Flags, info.NumRegions, info.NumIrqs);
    }

    /// <summary>VFIO_DEVICE_GET_IRQ_INFO for one index (INTx, MSI, MSI-X, ERR, REQ on a PCI device).</summary>
    public unsafe VfioIrq GetIrq(uint index)
    {
        var info = new VfioIrqInfo { Argsz = (uint)sizeof(VfioIrqInfo), Index = index };
        // &info: stack memory of this frame.
        if (Libc.Ioctl(Handle, VfioUapi.VFIO_DEVICE_GET_IRQ_INFO, &info) < 0)
            throw VfioException.FromLastError($"VFIO_DEVICE_GET_IRQ_INFO({index}) on {Name}");
        return new VfioIrq(info.Index, info.Flags, info.Count);
    }

    /// <summary>Every interrupt index the device reports (NumIrqs of its info).</summary>
    public IReadOnlyList<VfioIrq> GetIrqs() => Enumerable.Range(0, (int)Info.NumIrqs).Select(i => GetIrq((uint)i)).ToList();

    /// <summary>VFIO_DEVICE_GET_REGION_INFO for one index.</summary>
    public unsafe VfioRegion GetRegion(uint index)
    {
        var info = new VfioRegionInfo { Argsz = (uint)sizeof(VfioRegionInfo), Index = index };
        // &info: stack memory of this frame.
        if (Libc.Ioctl(Handle, VfioUapi.VFIO_DEVICE_GET_REGION_INFO, &info) < 0)
            throw VfioException.FromLastError($"VFIO_DEVICE_GET_REGION_INFO({index}) on {Name}");
        return new VfioRegion(info.Index, info.Flags, info.Size, info.Offset);
    }

    /// <summary>Every implemented region (size &gt; 0).</summary>
    public IReadOnlyList<VfioRegion> GetRegions()
    {
        var list = new List<VfioRegion>();
        for (uint i = 0; i < Info.NumRegions; i++)
        {
            VfioRegion region;
            try { region = GetRegion(i); }
            // vfio-pci refuses the VGA region of a device that has none (EINVAL) instead of reporting it empty.
            catch (VfioException e) when (e.Errno == Libc.EINVAL) { continue; }
            if (region.Size > 0)
                list.Add(region);
        }
        return list;
    }

    /// <summary>Reads a region at an offset within it (pread on the device fd at region offset + offset).</summary>
    public unsafe void ReadRegion(uint index, ulong offset, Span<byte> buffer)
    {
        var region = CheckRange(index, offset, buffer.Length, write: false);
        // p: the caller's buffer, pinned by fixed for every pread.
        fixed (byte* p = buffer)
        {
            int done = 0;
            while (done < buffer.Length)
            {
                nint n = Libc.PRead(Handle, p + done, (nuint)(buffer.Length - done), (long)(region.Offset + offset) + done);
                if (n > 0) { done += (int)n; continue; }
                int errno = n == 0 ? Libc.EIO : Marshal.GetLastPInvokeError();
                if (errno == Libc.EINTR) continue;
                throw new VfioException($"pread({region.Name} of {Name} at 0x{offset + (ulong)done:x})", errno,
                    $"{done} of {buffer.Length} bytes read");
            }
        }
    }

    /// <summary>Writes a region at an offset within it (pwrite on the device fd).</summary>
    public unsafe void WriteRegion(uint index, ulong offset, ReadOnlySpan<byte> data)
    {
        var region = CheckRange(index, offset, data.Length, write: true);
        // p: the caller's data, pinned by fixed for every pwrite.
        fixed (byte* p = data)
        {
            int done = 0;
            while (done < data.Length)
            {
                nint n = Libc.PWrite(Handle, p + done, (nuint)(data.Length - done), (long)(region.Offset + offset) + done);
                if (n > 0) { done += (int)n; continue; }
                int errno = n == 0 ? Libc.EIO : Marshal.GetLastPInvokeError();
                if (errno == Libc.EINTR) continue;
                throw new VfioException($"pwrite({region.Name} of {Name} at 0x{offset + (ulong)done:x})", errno,
                    $"{done} of {data.Length} bytes written");
            }
        }
    }

    private VfioRegion CheckRange(uint index, ulong offset, int length, bool write)
    {
        var region = GetRegion(index);
        if (write ? !region.CanWrite : !region.CanRead)
            throw new VfioException($"{(write ? "write" : "read")} {region.Name} of {Name}", 0,
                $"the region is not {(write ? "writable" : "readable")}");
        if (offset > region.Size || (ulong)length > region.Size - offset)
            throw new ArgumentOutOfRangeException(nameof(offset),
                $"{length} bytes at 0x{offset:x} do not fit in {region.Name} of {Name} (size 0x{region.Size:x})");
        return region;
    }

    /// <summary>Reads PCI config space through the config region.</summary>
    public void ReadConfig(int offset, Span<byte> buffer) =>
        ReadRegion(VfioUapi.VFIO_PCI_CONFIG_REGION_INDEX, checked((ulong)offset), buffer);

    /// <summary>Writes PCI config space through the config region (vfio-pci virtualizes parts of it).</summary>
    public void WriteConfig(int offset, ReadOnlySpan<byte> data) =>
        WriteRegion(VfioUapi.VFIO_PCI_CONFIG_REGION_INDEX, checked((ulong)offset), data);

    public ushort ReadConfigUInt16(int offset)
    {
        Span<byte> b = stackalloc byte[2];
        ReadConfig(offset, b);
        return BinaryPrimitives.ReadUInt16LittleEndian(b);
    }

    public uint ReadConfigUInt32(int offset)
    {
        Span<byte> b = stackalloc byte[4];
        ReadConfig(offset, b);
        return BinaryPrimitives.ReadUInt32LittleEndian(b);
    }

    public void WriteConfigUInt16(int offset, ushort value)
    {
        Span<byte> b = stackalloc byte[2];
        BinaryPrimitives.WriteUInt16LittleEndian(b, value);
        WriteConfig(offset, b);
    }

    /// <summary>VFIO_DEVICE_RESET. Also brings a device out of the ERROR migration state (to RUNNING).</summary>
    public void Reset()
    {
        if (Libc.IoctlValue(Handle, VfioUapi.VFIO_DEVICE_RESET, 0) < 0)
        {
            // Read before Info, which may make an ioctl of its own.
            int errno = Marshal.GetLastPInvokeError();
            throw new VfioException($"VFIO_DEVICE_RESET on {Name}", errno,
                Info.SupportsReset ? null : "the device does not report VFIO_DEVICE_FLAGS_RESET");
        }
    }

    // ---- VFIO_DEVICE_FEATURE ----------------------------------------------------------------------

    /// <summary>VFIO_DEVICE_FEATURE with a struct as its payload (see <see cref="Feature(uint, Span{byte})"/>).</summary>
    private int Feature<T>(uint flags, ref T payload) where T : unmanaged =>
        Feature(flags, MemoryMarshal.AsBytes(new Span<T>(ref payload)));

    /// <summary>
    /// One VFIO_DEVICE_FEATURE call: header {argsz, flags} followed by the payload, copied back afterwards.
    /// Returns the errno (0 on success) so callers can treat "not supported" themselves.
    /// </summary>
    private unsafe int Feature(uint flags, Span<byte> payload)
    {
        int total = sizeof(VfioDeviceFeature) + payload.Length;
        ulong* buffer = stackalloc ulong[(total + 7) / 8];
        var header = (VfioDeviceFeature*)buffer;
        header->Argsz = (uint)total;
        header->Flags = flags;
        var data = new Span<byte>((byte*)buffer + sizeof(VfioDeviceFeature), payload.Length);
        payload.CopyTo(data);
        // buffer: stackalloc memory of this frame.
        if (Libc.Ioctl(Handle, VfioUapi.VFIO_DEVICE_FEATURE, buffer) < 0)
            return Marshal.GetLastPInvokeError();
        // Copied back after SET too: SET MIG_DEVICE_STATE returns the data fd in the payload.
        data.CopyTo(payload);
        return 0;
    }

    /// <summary>ENOTTY, EINVAL or EOPNOTSUPP: how the kernel says a VFIO_DEVICE_FEATURE is not supported.</summary>
    internal static bool IsNotSupported(int errno) => errno is Libc.ENOTTY or Libc.EINVAL or Libc.EOPNOTSUPP;

    private static string FeatureName(uint feature) => feature switch
    {
        VfioUapi.VFIO_DEVICE_FEATURE_MIGRATION => "MIGRATION",
        VfioUapi.VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE => "MIG_DEVICE_STATE",
        VfioUapi.VFIO_DEVICE_FEATURE_DMA_LOGGING_START => "DMA_LOGGING_START",
        VfioUapi.VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP => "DMA_LOGGING_STOP",
        VfioUapi.VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT => "DMA_LOGGING_REPORT",
        VfioUapi.VFIO_DEVICE_FEATURE_MIG_DATA_SIZE => "MIG_DATA_SIZE",
        _ => $"feature {feature}",
    };

    private string FeatureOp(string verb, uint feature, string? extra = null) =>
        $"VFIO_DEVICE_FEATURE({verb} {FeatureName(feature)}{(extra is null ? "" : " " + extra)}) on {Name}";

    /// <summary>VFIO_DEVICE_FEATURE_PROBE: whether the device supports a feature for GET and/or SET.</summary>
    public bool SupportsFeature(uint feature, bool get = true, bool set = false)
    {
        uint flags = feature | VfioUapi.VFIO_DEVICE_FEATURE_PROBE
            | (get ? VfioUapi.VFIO_DEVICE_FEATURE_GET : 0) | (set ? VfioUapi.VFIO_DEVICE_FEATURE_SET : 0);
        int errno = Feature(flags, []);
        if (errno == 0) return true;
        if (IsNotSupported(errno)) return false;
        throw new VfioException(FeatureOp("PROBE", feature), errno);
    }

    /// <summary>
    /// VFIO_DEVICE_FEATURE GET MIGRATION: the device's migration flags, or null when it does not support
    /// migration (ENOTTY, or EINVAL from mdev before 6.18).
    /// </summary>
    public MigrationFlags? GetMigrationFlags()
    {
        var mig = new VfioDeviceFeatureMigration();
        int errno = Feature(VfioUapi.VFIO_DEVICE_FEATURE_MIGRATION | VfioUapi.VFIO_DEVICE_FEATURE_GET, ref mig);
        if (errno == 0) return (MigrationFlags)mig.Flags;
        if (IsNotSupported(errno)) return null;
        throw new VfioException(FeatureOp("GET", VfioUapi.VFIO_DEVICE_FEATURE_MIGRATION), errno);
    }

    /// <summary>As <see cref="GetMigrationFlags"/>, but throws a plain "not migratable" error when unsupported.</summary>
    public MigrationFlags RequireMigrationFlags() =>
        GetMigrationFlags() ?? throw new VfioException(FeatureOp("GET", VfioUapi.VFIO_DEVICE_FEATURE_MIGRATION), Libc.ENOTTY,
            $"{Name} does not support migration (its driver offers no VFIO migration; "
            + "for mlx5 VFs bind mlx5_vfio_pci after enabling the port function's migratable capability)");

    /// <summary>VFIO_DEVICE_FEATURE GET MIG_DEVICE_STATE.</summary>
    public MigrationState GetMigrationState()
    {
        var st = new VfioDeviceFeatureMigState { DataFd = -1 };
        int errno = Feature(VfioUapi.VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE | VfioUapi.VFIO_DEVICE_FEATURE_GET, ref st);
        if (errno != 0)
            throw new VfioException(FeatureOp("GET", VfioUapi.VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE), errno);
        return (MigrationState)st.DeviceState;
    }

    /// <summary>
    /// VFIO_DEVICE_FEATURE SET MIG_DEVICE_STATE. Returns the data fd as a stream when the kernel opens a data
    /// session (->STOP_COPY from STOP, ->RESUMING, ->PRE_COPY, ->PRE_COPY_P2P), else null. On failure the
    /// exception says which state the device is in afterwards (it may have stopped part way).
    /// </summary>
    /// <remarks>
    /// Two requests are refused here with EINVAL without reaching the kernel, which mishandles them: from
    /// ERROR (the core helper WARNs; only <see cref="Reset"/> leads out), and STOP_COPY -> PRE_COPY or
    /// PRE_COPY_P2P (not permitted by the uAPI; the core helper of unfixed kernels, 6.12 included, loops
    /// forever on it and locks up a CPU).
    /// </remarks>
    public MigrationDataStream? SetMigrationState(MigrationState target)
    {
        var op = FeatureOp("SET", VfioUapi.VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE, MigrationStateMachine.Name(target));
        var current = GetMigrationState();
        if (current == MigrationState.Error && target != MigrationState.Error)
            throw new VfioException(op, Libc.EINVAL,
                "the device is in ERROR: only VFIO_DEVICE_RESET leads out (to RUNNING); the device is now in ERROR");
        if (current == MigrationState.StopCopy && target is MigrationState.PreCopy or MigrationState.PreCopyP2P)
            throw new VfioException(op, Libc.EINVAL,
                "STOP_COPY -> PRE_COPY is not permitted (refused before the kernel, whose helper can loop forever on it); "
                + "the device is now in STOP_COPY");
        var st = new VfioDeviceFeatureMigState { DeviceState = (uint)target, DataFd = -1 };
        int errno = Feature(VfioUapi.VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE | VfioUapi.VFIO_DEVICE_FEATURE_SET, ref st);
        if (errno != 0)
        {
            string detail;
            try
            {
                detail = $"the device is now in {MigrationStateMachine.Name(GetMigrationState())}";
            }
            catch (VfioException e)
            {
                detail = $"its state could not be read back ({e.ErrnoName})";
            }
            throw new VfioException(op, errno, detail);
        }
        return st.DataFd >= 0 ? new MigrationDataStream(new FileDescriptorHandle(st.DataFd), Name) : null;
    }

    /// <summary>VFIO_DEVICE_FEATURE GET MIG_DATA_SIZE: the estimated STOP_COPY data size in bytes.</summary>
    public ulong GetMigrationDataSize() =>
        TryGetMigrationDataSize(out var size, out int errno)
            ? size
            : throw new VfioException(FeatureOp("GET", VfioUapi.VFIO_DEVICE_FEATURE_MIG_DATA_SIZE), errno,
                IsNotSupported(errno) ? "the kernel or the driver does not offer MIG_DATA_SIZE (needs Linux 6.3+ and driver support)" : null);

    /// <summary>MIG_DATA_SIZE, or false with the errno when the device does not offer it.</summary>
    public bool TryGetMigrationDataSize(out ulong size, out int errno)
    {
        var ds = new VfioDeviceFeatureMigDataSize();
        errno = Feature(VfioUapi.VFIO_DEVICE_FEATURE_MIG_DATA_SIZE | VfioUapi.VFIO_DEVICE_FEATURE_GET, ref ds);
        size = ds.StopCopyLength;
        return errno == 0;
    }

    /// <summary>
    /// DMA_LOGGING_START: the device starts tracking the pages it writes in the given IOVA ranges. Returns the page size
    /// the driver chose, which reports must use: it may be larger than <paramref name="pageSize"/> (mlx5 raises it to
    /// what its tracker can hold). A second start without a stop is refused (EINVAL).
    /// </summary>
    public unsafe ulong StartDmaLogging(ulong pageSize, IReadOnlyList<(ulong Iova, ulong Length)> ranges)
    {
        if (ranges.Count == 0)
            throw new ArgumentException("DMA logging needs at least one IOVA range", nameof(ranges));
        var array = new VfioDeviceFeatureDmaLoggingRange[ranges.Count];
        for (int i = 0; i < array.Length; i++)
            array[i] = new VfioDeviceFeatureDmaLoggingRange { Iova = ranges[i].Iova, Length = ranges[i].Length };
        // p: the ranges the kernel reads through control.Ranges, pinned by fixed for the ioctl.
        fixed (VfioDeviceFeatureDmaLoggingRange* p = array)
        {
            var control = new VfioDeviceFeatureDmaLoggingControl { PageSize = pageSize, NumRanges = (uint)array.Length, Ranges = (ulong)p };
            int errno = Feature(VfioUapi.VFIO_DEVICE_FEATURE_DMA_LOGGING_START | VfioUapi.VFIO_DEVICE_FEATURE_SET, ref control);
            if (errno != 0)
                throw new VfioException(FeatureOp("SET", VfioUapi.VFIO_DEVICE_FEATURE_DMA_LOGGING_START), errno,
                    IsNotSupported(errno) ? "the device does not support DMA logging (dirty page tracking)" : null);
            return control.PageSize;
        }
    }

    /// <summary>DMA_LOGGING_STOP.</summary>
    public void StopDmaLogging()
    {
        int errno = Feature(VfioUapi.VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP | VfioUapi.VFIO_DEVICE_FEATURE_SET, []);
        if (errno != 0)
            throw new VfioException(FeatureOp("SET", VfioUapi.VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP), errno);
    }

    /// <summary>
    /// DMA_LOGGING_REPORT: fills <paramref name="bitmap"/> (one bit per page of <paramref name="pageSize"/> over
    /// [iova, iova+length), at least ceil(length / pageSize / 64) words) with the pages dirtied since the last report.
    /// </summary>
    public unsafe void ReportDmaLogging(ulong iova, ulong length, ulong pageSize, Span<ulong> bitmap)
    {
        ArgumentOutOfRangeException.ThrowIfZero(pageSize);
        ulong pages = (length + pageSize - 1) / pageSize;
        if ((ulong)bitmap.Length < (pages + 63) / 64)
            throw new ArgumentException($"the bitmap needs {(pages + 63) / 64} words for {pages} pages", nameof(bitmap));
        // p: the bitmap the kernel writes through report.Bitmap, pinned by fixed for the ioctl.
        fixed (ulong* p = bitmap)
        {
            var report = new VfioDeviceFeatureDmaLoggingReport { Iova = iova, Length = length, PageSize = pageSize, Bitmap = (ulong)p };
            int errno = Feature(VfioUapi.VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT | VfioUapi.VFIO_DEVICE_FEATURE_GET, ref report);
            if (errno != 0)
                throw new VfioException(FeatureOp("GET", VfioUapi.VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT), errno);
        }
    }

    public void Dispose()
    {
        Handle.Dispose();
        _ownedGroup?.Dispose();
        _ownedContainer?.Dispose();
        _ownedIommufd?.Dispose();
    }
}
