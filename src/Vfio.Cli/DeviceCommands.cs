using System.CommandLine;
using System.Globalization;
using System.Runtime.CompilerServices;
using System.Text;
using System.Text.Json;

[assembly: InternalsVisibleTo("Vfio.Tests")]

namespace Vfio.Cli;

/// <summary>`list` and `info`: what VFIO devices this host has.</summary>
internal static class DeviceCommands
{
    /// <param name="paths">Where sysfs and /dev are: the host's, or a fake tree in tests.</param>
    /// <param name="devlink">Asked for the migratable flag of VFs that cannot be opened (none: not asked).</param>
    public static IEnumerable<Command> Create(VfioHostPaths paths, Vfio.Host.IDevlink? devlink = null)
    {
        yield return CreateList(paths, devlink);
        yield return CreateInfo(paths);
    }

    private static Command CreateList(VfioHostPaths paths, Vfio.Host.IDevlink? devlink)
    {
        var all = new Option<bool>("--all") { Description = "Also the SR-IOV VFs not bound to a VFIO driver (as before `vf bind`)" };
        var json = new Option<bool>("--json") { Description = "Print a JSON array instead of a table" };
        var noProbe = new Option<bool>("--no-probe")
        {
            Description = "Do not open the devices to read their migration flags (opening resets an idle vfio-pci device)",
        };
        var command = new Command("list", "List the VFIO devices of this host (vfio-pci and variant drivers such as mlx5_vfio_pci, and mdev devices)")
        {
            json,
            noProbe,
            all,
        };
        command.SetAction(parseResult =>
        {
            var output = parseResult.InvocationConfiguration.Output;
            var error = parseResult.InvocationConfiguration.Error;
            bool asJson = parseResult.GetValue(json), allVfs = parseResult.GetValue(all);
            if (!paths.HasVfio && !allVfs)
            {
                error.WriteLine($"vfio-mig: no {paths.VfioDir} on this host: VFIO is not available, so there are no VFIO devices");
                if (asJson)
                    output.WriteLine("[]");
                return 0;
            }
            IReadOnlyList<VfioDeviceSummary> devices;
            try
            {
                devices = VfioDiscovery.Enumerate(paths, probeMigration: !parseResult.GetValue(noProbe), allVfs);
            }
            catch (Exception e) when (e is VfioException or IOException or UnauthorizedAccessException)
            {
                error.WriteLine($"vfio-mig: list: {e.Message}");
                return ExitCodes.Failed;
            }
            var migratable = devices.ToDictionary(d => d.Name, d => DevlinkMigratable(d, devlink));
            if (asJson)
            {
                output.WriteLine(ListJson(devices, migratable));
                return 0;
            }
            if (devices.Count == 0)
            {
                error.WriteLine("vfio-mig: no device is bound to a VFIO driver");
                return 0;
            }
            output.Write(ListTable(devices, migratable));
            return 0;
        });
        return command;
    }

    private static Command CreateInfo(VfioHostPaths paths)
    {
        var json = new Option<bool>("--json") { Description = "Print a JSON object instead of text" };
        var device = new Argument<string>("DEVICE") { Description = "PCI address (0000:af:00.2) or mdev UUID" };
        var command = new Command("info", "Show one VFIO device: driver, IOMMU group, regions, migration flags and state")
        {
            device,
            json,
        };
        command.SetAction(parseResult =>
        {
            var output = parseResult.InvocationConfiguration.Output;
            var error = parseResult.InvocationConfiguration.Error;
            var name = parseResult.GetValue(device) ?? "";
            try
            {
                // A name that is no device of this host is bad input; anything after that is the host failing to answer.
                try { VfioSysfs.Resolve(name, paths); }
                catch (Exception e) when (e is VfioException or ArgumentException)
                {
                    error.WriteLine($"vfio-mig: info {name}: {OneLine(e.Message)}");
                    return ExitCodes.Usage;
                }
                var info = DeviceInfoReport.Collect(name, paths);
                output.Write(parseResult.GetValue(json) ? info.ToJson() + Environment.NewLine : info.ToText());
                return 0;
            }
            catch (Exception e) when (e is VfioException or IOException or UnauthorizedAccessException or ArgumentException)
            {
                error.WriteLine($"vfio-mig: info {name}: {OneLine(e.Message)}");
                return ExitCodes.Failed;
            }
        });
        return command;
    }

    private static string OneLine(string s) => s.ReplaceLineEndings(" ");

    /// <summary>
    /// devlink's migratable flag of a VF that was not opened (not bound to VFIO, or not probed): what decides whether it
    /// will migrate once bound to mlx5_vfio_pci. Null when unknown (no devlink, no port, no such capability).
    /// </summary>
    private static bool? DevlinkMigratable(VfioDeviceSummary d, Vfio.Host.IDevlink? devlink)
    {
        if (devlink is null || d.IsMigratable || d.Device.Pf is not { } pf || d.Device.VfIndex is not { } vf) return null;
        try { return devlink.VfPort(pf, vf)?.Migratable; }
        catch (VfioException) { return null; }
    }

    private static readonly string[] ListHeader = ["DEVICE", "KIND", "DRIVER", "PF", "VF", "GROUP", "NUMA", "CDEV", "MIGRATION"];
    private static readonly string[] RegionHeader = ["REGION", "INDEX", "SIZE", "OFFSET", "FLAGS"];

    internal static string ListTable(IReadOnlyList<VfioDeviceSummary> devices, IReadOnlyDictionary<string, bool?>? migratable = null)
    {
        var rows = new List<string[]> { ListHeader };
        foreach (var d in devices)
        {
            string migration = migratable?.GetValueOrDefault(d.Name) is bool m
                ? $"{d.MigrationStatus}; devlink migratable {(m ? "enable" : "disable")}" : d.MigrationStatus;
            rows.Add([
                d.Name,
                d.Device.Kind == VfioDeviceKind.Pci ? "pci" : "mdev",
                d.Device.Driver ?? "-",
                d.Device.Pf ?? "-",
                d.Device.VfIndex?.ToString(CultureInfo.InvariantCulture) ?? "-",
                d.Device.IommuGroup?.ToString(CultureInfo.InvariantCulture) ?? "-",
                d.Device.NumaNode?.ToString(CultureInfo.InvariantCulture) ?? "-",
                d.Device.CdevName ?? "-",
                migration,
            ]);
        }
        return Table(rows);
    }

    internal static string Table(List<string[]> rows)
    {
        int columns = rows[0].Length;
        var widths = new int[columns];
        foreach (var row in rows)
            for (int i = 0; i < columns; i++)
                widths[i] = Math.Max(widths[i], row[i].Length);
        var sb = new StringBuilder();
        foreach (var row in rows)
        {
            for (int i = 0; i < columns; i++)
            {
                if (i == columns - 1) sb.Append(row[i]);
                else sb.Append(row[i].PadRight(widths[i] + 2));
            }
            sb.Append('\n');
        }
        return sb.ToString();
    }

    internal static string ListJson(IReadOnlyList<VfioDeviceSummary> devices, IReadOnlyDictionary<string, bool?>? migratable = null)
    {
        using var stream = new MemoryStream();
        using (var w = new Utf8JsonWriter(stream, new JsonWriterOptions { Indented = true }))
        {
            w.WriteStartArray();
            foreach (var d in devices)
            {
                w.WriteStartObject();
                WriteSysfs(w, d.Device);
                WriteMigrationFlags(w, d.MigrationFlags);
                w.WriteString("migration_status", d.MigrationStatus);
                if (migratable?.GetValueOrDefault(d.Name) is bool m) w.WriteBoolean("devlink_migratable", m);
                w.WriteEndObject();
            }
            w.WriteEndArray();
        }
        return Encoding.UTF8.GetString(stream.ToArray());
    }

    internal static void WriteSysfs(Utf8JsonWriter w, VfioSysfsDevice d)
    {
        w.WriteString("name", d.Name);
        w.WriteString("kind", d.Kind == VfioDeviceKind.Pci ? "pci" : "mdev");
        WriteNullable(w, "driver", d.Driver);
        if (d.IommuGroup is int g) w.WriteNumber("iommu_group", g); else w.WriteNull("iommu_group");
        WriteNullable(w, "cdev", d.CdevName);
        if (d.Kind == VfioDeviceKind.Pci)
        {
            WriteNullable(w, "pf", d.Pf);
            if (d.VfIndex is int vf) w.WriteNumber("vf_index", vf); else w.WriteNull("vf_index");
            if (d.NumaNode is int n) w.WriteNumber("numa_node", n); else w.WriteNull("numa_node");
        }
        if (d.Kind == VfioDeviceKind.Mdev)
        {
            WriteNullable(w, "parent", d.Parent);
            WriteNullable(w, "mdev_type", d.MdevType);
        }
    }

    internal static void WriteMigrationFlags(Utf8JsonWriter w, MigrationFlags? flags)
    {
        if (flags is not MigrationFlags f)
        {
            w.WriteNull("migration_flags");
            return;
        }
        w.WriteStartArray("migration_flags");
        if (f.HasFlag(MigrationFlags.StopCopy)) w.WriteStringValue("STOP_COPY");
        if (f.HasFlag(MigrationFlags.P2P)) w.WriteStringValue("P2P");
        if (f.HasFlag(MigrationFlags.PreCopy)) w.WriteStringValue("PRE_COPY");
        w.WriteEndArray();
    }

    private static void WriteNullable(Utf8JsonWriter w, string name, string? value)
    {
        if (value is null) w.WriteNull(name); else w.WriteString(name, value);
    }

    /// <summary>Everything `info` shows about one device, gathered by opening it.</summary>
    internal sealed class DeviceInfoReport
    {
        private VfioSysfsDevice _sysfs = null!;
        private VfioOpenMode _via;
        private VfioDeviceInformation _info;
        private IReadOnlyList<VfioRegion> _regions = [];
        private (ushort Vendor, ushort Device)? _ids;
        private MigrationFlags? _flags;
        private string? _state;
        private ulong? _dataSize;
        private readonly List<string> _notes = [];

        public static DeviceInfoReport Collect(string name, VfioHostPaths paths)
        {
            var r = new DeviceInfoReport();
            using var device = VfioDevice.Open(name, paths);
            r._sysfs = device.Sysfs ?? VfioSysfs.Resolve(name, paths);
            r._via = device.OpenedVia;
            r._info = device.Info;
            r._regions = device.GetRegions();
            if (r._info.IsPci)
            {
                try
                {
                    r._ids = (device.ReadConfigUInt16(0), device.ReadConfigUInt16(2));
                }
                catch (VfioException e)
                {
                    r._notes.Add($"config space: {e.Message}");
                }
            }
            r._flags = device.GetMigrationFlags();
            if (r._flags is not null)
            {
                try
                {
                    r._state = MigrationStateMachine.Name(device.GetMigrationState());
                }
                catch (VfioException e)
                {
                    r._notes.Add($"migration state: {e.Message}");
                }
                if (device.TryGetMigrationDataSize(out var size, out _))
                    r._dataSize = size;
            }
            return r;
        }

        public string ToText()
        {
            var rows = new List<string[]>
            {
                new[] { "device", _sysfs.Name },
                new[] { "kind", _sysfs.Kind == VfioDeviceKind.Pci ? "pci" : "mdev" },
                new[] { "driver", _sysfs.Driver ?? "-" },
                new[] { "iommu group", _sysfs.IommuGroup?.ToString(CultureInfo.InvariantCulture) ?? "-" },
                new[] { "cdev", _sysfs.CdevName ?? "-" },
                new[] { "opened via", _via == VfioOpenMode.Cdev ? "cdev + iommufd" : "group + container" },
            };
            if (_sysfs.Kind == VfioDeviceKind.Mdev)
            {
                rows.Add(["parent", _sysfs.Parent ?? "-"]);
                rows.Add(["mdev type", _sysfs.MdevType ?? "-"]);
            }
            rows.Add(["flags", DeviceFlags(_info.Flags)]);
            rows.Add(["regions / irqs", $"{_info.NumRegions} / {_info.NumIrqs}"]);
            if (_ids is var (vendor, dev))
                rows.Add(["vendor:device", $"{vendor:x4}:{dev:x4}"]);
            rows.Add(["migration", _flags is MigrationFlags f ? MigrationStateMachine.Describe(f) : "not supported"]);
            if (_state is not null)
                rows.Add(["migration state", _state]);
            if (_flags is not null)
                rows.Add(["stop-copy size", _dataSize is ulong s ? $"{s} bytes" : "not reported (no MIG_DATA_SIZE)"]);
            var sb = new StringBuilder();
            foreach (var row in rows)
                sb.Append(row[0].PadRight(17)).Append(row[1]).Append('\n');
            if (_regions.Count > 0)
            {
                sb.Append('\n');
                var table = new List<string[]> { RegionHeader };
                foreach (var region in _regions)
                    table.Add([region.Name, region.Index.ToString(CultureInfo.InvariantCulture), $"0x{region.Size:x}", $"0x{region.Offset:x}",
                        RegionFlags(region)]);
                sb.Append(Table(table));
            }
            foreach (var note in _notes)
                sb.Append("note: ").Append(note).Append('\n');
            return sb.ToString();
        }

        public string ToJson()
        {
            using var stream = new MemoryStream();
            using (var w = new Utf8JsonWriter(stream, new JsonWriterOptions { Indented = true }))
            {
                w.WriteStartObject();
                WriteSysfs(w, _sysfs);
                w.WriteString("opened_via", _via == VfioOpenMode.Cdev ? "cdev" : "group");
                w.WriteNumber("device_flags", _info.Flags);
                w.WriteNumber("num_regions", _info.NumRegions);
                w.WriteNumber("num_irqs", _info.NumIrqs);
                if (_ids is var (vendor, dev))
                {
                    w.WriteString("vendor_id", $"{vendor:x4}");
                    w.WriteString("device_id", $"{dev:x4}");
                }
                WriteMigrationFlags(w, _flags);
                if (_state is null) w.WriteNull("migration_state"); else w.WriteString("migration_state", _state);
                if (_dataSize is ulong s) w.WriteNumber("stop_copy_bytes", s); else w.WriteNull("stop_copy_bytes");
                w.WriteStartArray("regions");
                foreach (var region in _regions)
                {
                    w.WriteStartObject();
                    w.WriteString("name", region.Name);
                    w.WriteNumber("index", region.Index);
                    w.WriteNumber("size", region.Size);
                    w.WriteNumber("offset", region.Offset);
                    w.WriteNumber("flags", region.Flags);
                    w.WriteEndObject();
                }
                w.WriteEndArray();
                w.WriteStartArray("notes");
                foreach (var note in _notes) w.WriteStringValue(note);
                w.WriteEndArray();
                w.WriteEndObject();
            }
            return Encoding.UTF8.GetString(stream.ToArray());
        }

        private static string DeviceFlags(uint flags)
        {
            var parts = new List<string>();
            if ((flags & Interop.VfioUapi.VFIO_DEVICE_FLAGS_PCI) != 0) parts.Add("PCI");
            if ((flags & Interop.VfioUapi.VFIO_DEVICE_FLAGS_RESET) != 0) parts.Add("RESET");
            if ((flags & Interop.VfioUapi.VFIO_DEVICE_FLAGS_CAPS) != 0) parts.Add("CAPS");
            return parts.Count == 0 ? $"0x{flags:x}" : $"{string.Join('|', parts)} (0x{flags:x})";
        }

        private static string RegionFlags(VfioRegion region)
        {
            var parts = new List<string>();
            if (region.CanRead) parts.Add("read");
            if (region.CanWrite) parts.Add("write");
            if (region.CanMmap) parts.Add("mmap");
            return parts.Count == 0 ? "-" : string.Join(',', parts);
        }
    }
}
