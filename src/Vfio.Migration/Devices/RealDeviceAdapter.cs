namespace Vfio.Migration;

/// <summary>
/// The engine's view of a real VFIO device, through the object model (Vfio.Core's VfioDevice): the kernel
/// walks combination transitions, MIG_DATA_SIZE gives the estimate, VFIO_DEVICE_RESET resets.
/// Config state is the device's standard PCI config header (256 bytes) read through the config region; on the
/// destination, RestoreConfig checks that vendor and device id match and restores only the command register
/// (memory/IO decode and bus mastering): vfio-pci virtualizes BARs and MSI state, which belong to the VMM.
/// Devices that are not PCI functions (no config region) send an empty config state.
/// Digest: a device that publishes a "digest" sysfs attribute (the project's vfio_mig_sim kernel module:
/// SHA-256 of its state, hex) reports its first 64 bits; other real devices report none (the stream
/// checksum is still verified).
/// Identity (<see cref="Identify"/>): the bound driver, the running kernel's release and the firmware version sysfs shows.
/// </summary>
public sealed class RealDeviceAdapter : IMigrationDevice
{
    public const int ConfigBytes = 256;
    private readonly VfioDevice _device;

    private const string KernelReleasePath = "/proc/sys/kernel/osrelease";

    private RealDeviceAdapter(VfioDevice device, MigrationFlags flags)
    {
        _device = device;
        Flags = flags;
        Identity = Identify(device.Sysfs, VfioSysfs.ReadAttribute(KernelReleasePath) ?? "");
    }

    public static IMigrationDevice Open(string spec)
    {
        VfioDevice? device = null;
        try
        {
            device = VfioDevice.Open(spec);
            var flags = device.RequireMigrationFlags();
            if (!flags.HasFlag(MigrationFlags.StopCopy))
                throw new MigrationException($"{spec}: the device does not offer STOP_COPY migration");
            return new RealDeviceAdapter(device, flags);
        }
        catch (Exception e) when (e is VfioException or IOException or UnauthorizedAccessException or ArgumentException)
        {
            device?.Dispose();
            throw new MigrationException($"{spec}: {e.Message}");
        }
        catch
        {
            device?.Dispose();
            throw;
        }
    }

    public string Name => _device.Name;
    public MigrationFlags Flags { get; }
    public DeviceIdentity Identity { get; }

    /// <summary>
    /// What sysfs shows of a device's stream format: the bound driver (for an mdev its mdev type, which the kernel names
    /// after the parent's driver), the kernel release given, and the firmware version of the device or, for a VF, of its
    /// PF (through physfn): the fw_ver of the RDMA device on that function (mlx5_ib publishes the adapter's firmware
    /// there; a VF bound to a VFIO driver has no RDMA device of its own). "" for what is not there.
    /// </summary>
    internal static DeviceIdentity Identify(VfioSysfsDevice? sysfs, string kernelRelease)
    {
        if (sysfs is null) return DeviceIdentity.Unknown with { Kernel = kernelRelease };
        string driver = (sysfs.Kind == VfioDeviceKind.Mdev ? sysfs.MdevType : sysfs.Driver) ?? "";
        string firmware = FirmwareVersion(sysfs.SysfsPath) ?? FirmwareVersion(Path.Combine(sysfs.SysfsPath, "physfn")) ?? "";
        return new DeviceIdentity(driver, kernelRelease, firmware);
    }

    /// <summary>The fw_ver of the first RDMA device (by name) on a PCI function's sysfs directory, or null.</summary>
    private static string? FirmwareVersion(string function)
    {
        string[] rdma;
        try { rdma = Directory.Exists(Path.Combine(function, "infiniband")) ? Directory.GetDirectories(Path.Combine(function, "infiniband")) : []; }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { return null; }
        return rdma.Order(StringComparer.Ordinal).Select(d => VfioSysfs.ReadAttribute(Path.Combine(d, "fw_ver")))
            .FirstOrDefault(v => !string.IsNullOrEmpty(v));
    }

    public MigrationState GetState() => _device.GetMigrationState();

    public IDeviceDataStream? SetState(MigrationState target) =>
        _device.SetMigrationState(target) is { } fd ? new FdStream(fd) : null;

    public ulong? StopCopySizeEstimate() => _device.TryGetMigrationDataSize(out ulong size, out _) ? size : null;

    public byte[] SaveConfig()
    {
        if (!_device.Info.IsPci) return [];
        var config = new byte[ConfigBytes];
        _device.ReadConfig(0, config);
        return config;
    }

    public void RestoreConfig(ReadOnlySpan<byte> config)
    {
        if (config.Length == 0 && !_device.Info.IsPci) return;
        if (config.Length < 8)
            throw new VfioException($"restore config state of {Name}", Vfio.Interop.Libc.EINVAL, $"config state of {config.Length} bytes");
        Span<byte> ids = stackalloc byte[4];
        _device.ReadConfig(0, ids);
        if (!ids.SequenceEqual(config[..4]))
            throw new VfioException($"restore config state of {Name}", Vfio.Interop.Libc.EINVAL,
                $"source device is {config[1]:x2}{config[0]:x2}:{config[3]:x2}{config[2]:x2}, "
                + $"this one {ids[1]:x2}{ids[0]:x2}:{ids[3]:x2}{ids[2]:x2}");
        ushort command = (ushort)(config[4] | config[5] << 8);
        _device.WriteConfigUInt16(4, (ushort)(command & 0x0007)); // IO, memory, bus master
    }

    public void Reset() => _device.Reset();

    public ulong? StateDigest()
    {
        if (_device.Sysfs is not { } sysfs) return null;
        string? text = VfioSysfs.ReadAttribute(Path.Combine(sysfs.SysfsPath, "digest"));
        return text is { Length: >= 16 } && ulong.TryParse(text.AsSpan(0, 16), System.Globalization.NumberStyles.HexNumber, null, out ulong d)
            ? d : null;
    }

    public void Dispose() => _device.Dispose();

    public override string ToString() => Name;

    /// <summary>The kernel's migration data fd, as the engine's stream.</summary>
    private sealed class FdStream(MigrationDataStream fd) : IDeviceDataStream
    {
        public DataRead Read(Span<byte> buffer) => fd.Read(buffer);
        public void WriteAll(ReadOnlySpan<byte> data) => fd.WriteAll(data);
        public PrecopyInfo GetPrecopyInfo()
        {
            var (initial, dirty) = fd.GetPrecopyInfo();
            return new PrecopyInfo(initial, dirty);
        }

        public void Dispose() => fd.Dispose();
    }
}
