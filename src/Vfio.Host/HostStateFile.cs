using System.Text.Json;
using System.Text.Json.Serialization;

namespace Vfio.Host;

public enum HostChangeKind
{
    /// <summary>A PF's sriov_numvfs (Target: the PF).</summary>
    NumVfs,
    /// <summary>A function's driver and driver_override (Target: the function; BeforeOverride: its old driver_override).</summary>
    Driver,
    /// <summary>A PF's devlink eswitch mode (Target: the PF).</summary>
    EswitchMode,
    /// <summary>A VF's devlink port function migratable flag (Target: the port, pci/PF/N; values enable/disable).</summary>
    Migratable,
    /// <summary>A kernel module loaded for a driver (Target: the module).</summary>
    Module,
}

/// <summary>One change to the host: what it was before (null: none), what it was set to.</summary>
public sealed record HostChange(HostChangeKind Kind, string Target, string? Before, string? After, string? BeforeOverride = null);

/// <summary>
/// The journal of every change host set-up made, written before each change is applied, so that a restore after a
/// crash half-way knows of every change that may have happened. A second set-up adds to it; a change to something
/// already recorded keeps its first "before", so restore always goes back to the host as it was at the start.
/// </summary>
public sealed class HostStateFile
{
    public const string DefaultPath = "/run/vfio-mig/host-state.json";

    private static readonly JsonSerializerOptions Json = new()
    {
        WriteIndented = true,
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
        Converters = { new JsonStringEnumConverter(JsonNamingPolicy.SnakeCaseLower) },
    };

    private readonly List<HostChange> _changes;

    private HostStateFile(string path, List<HostChange> changes)
    {
        Path = path;
        _changes = changes;
    }

    public string Path { get; }

    public IReadOnlyList<HostChange> Changes => _changes;

    public bool Exists => File.Exists(Path);

    /// <summary>The journal at <paramref name="path"/>, or an empty one; a file that is not a journal is an error.</summary>
    public static HostStateFile Open(string path)
    {
        if (!File.Exists(path)) return new HostStateFile(path, []);
        try
        {
            var doc = JsonSerializer.Deserialize<Document>(File.ReadAllText(path), Json);
            if (doc is not { Version: 1, Changes: not null })
                throw new InvalidDataException($"{path}: not a vfio-mig host state file (version 1)");
            return new HostStateFile(path, [.. doc.Changes]);
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"{path}: not a vfio-mig host state file: {e.Message}");
        }
    }

    /// <summary>Records a change before it is made (a no-op when the same thing was recorded before).</summary>
    public void Record(HostChange change)
    {
        if (_changes.Any(c => c.Kind == change.Kind && c.Target == change.Target)) return;
        _changes.Add(change);
        Save();
    }

    /// <summary>Removes the journal once everything in it is undone.</summary>
    public void Delete()
    {
        _changes.Clear();
        File.Delete(Path);
    }

    private void Save()
    {
        Directory.CreateDirectory(System.IO.Path.GetDirectoryName(System.IO.Path.GetFullPath(Path))!);
        string temp = Path + ".tmp";
        // Written and flushed to disk, then renamed over the old one: a crash leaves the old journal or the new one.
        using (var f = new FileStream(temp, FileMode.Create, FileAccess.Write))
        {
            JsonSerializer.Serialize(f, new Document(1, _changes), Json);
            f.Flush(flushToDisk: true);
        }
        File.Move(temp, Path, overwrite: true);
    }

    private sealed record Document(int Version, List<HostChange>? Changes);
}
