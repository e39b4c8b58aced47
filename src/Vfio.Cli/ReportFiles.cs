using System.Text;
using Vfio.Migration;
using UsageException = Vfio.Cli.MigrationCommands.UsageException;

namespace Vfio.Cli;

/// <summary>
/// A file a run writes its report to (--json, --trace, --svg). It is opened before any device is touched, so that a
/// path that cannot be written is a usage error rather than a migration lost at its end; it is written after the run,
/// where a failure (a full disk) is a warning: the migration's outcome and exit code never depend on a report.
/// An existing file keeps its content until the report replaces it; a file created here and never written is removed.
/// </summary>
internal sealed class ReportFile : IDisposable
{
    private readonly FileStream _stream;
    private readonly bool _created;
    private bool _written;

    private ReportFile(string path, string option, FileStream stream, bool created)
    {
        Path = path;
        Option = option;
        _stream = stream;
        _created = created;
    }

    public string Path { get; }
    public string Option { get; }

    /// <summary>Opens each file given (null entries are options not given); a file that cannot be written is a usage error.</summary>
    public static ReportFile?[] OpenAll(params (string? Path, string Option)[] files)
    {
        var opened = new List<ReportFile?>();
        try
        {
            foreach (var (path, option) in files)
            {
                if (path is null) { opened.Add(null); continue; }
                if (opened.FirstOrDefault(f => f is not null && SamePath(f.Path, path)) is { } other)
                    throw new UsageException($"{option} and {other.Option} name the same file {path}");
                opened.Add(Open(path, option));
            }
            return [.. opened];
        }
        catch
        {
            foreach (var f in opened) f?.Dispose();
            throw;
        }
    }

    private static bool SamePath(string a, string b) => System.IO.Path.GetFullPath(a) == System.IO.Path.GetFullPath(b);

    private static ReportFile Open(string path, string option)
    {
        try
        {
            bool created = !File.Exists(path);
            var stream = new FileStream(path, FileMode.OpenOrCreate, FileAccess.Write, FileShare.Read);
            return new ReportFile(path, option, stream, created);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ArgumentException or NotSupportedException)
        {
            throw new UsageException($"{option}: cannot write {path}: {e.Message}");
        }
    }

    /// <summary>Replaces the file's content; on failure prints one warning line and returns false.</summary>
    public bool TryWrite(Action<Stream> write, TextWriter error)
    {
        try
        {
            if (_stream.CanSeek) _stream.SetLength(0);
            write(_stream);
            _stream.Flush(flushToDisk: _stream.CanSeek); // fsync: a full disk may show only then (a device such as a pipe has none)
            _written = true;
            return true;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or NotSupportedException)
        {
            _written = true; // what was written stays for a person to look at
            error.WriteLine($"vfio-mig: warning: {Option}: writing {Path} failed ({e.Message}); the outcome and exit code stand");
            return false;
        }
    }

    public bool TryWriteText(string text, TextWriter error) => TryWrite(s =>
    {
        var bytes = new UTF8Encoding(encoderShouldEmitUTF8Identifier: false).GetBytes(text);
        s.Write(bytes);
    }, error);

    /// <summary>Writes the run's report to its files (the timeline for failed runs too: it shows how far each device got).</summary>
    public static void WriteReport(RunReport report, ReportFile? json, ReportFile? trace, ReportFile? svg, TextWriter error)
    {
        json?.TryWrite(report.WriteJson, error);
        if (trace is null && svg is null) return;
        var timeline = TimelineExport.ToReportsTimeline(report);
        trace?.TryWrite(s => Vfio.Reports.ChromeTrace.Write(timeline, s), error);
        svg?.TryWriteText(Vfio.Reports.SvgTimeline.Render(timeline), error);
    }

    public void Dispose()
    {
        try { _stream.Dispose(); }
        catch (IOException) { /* a flush that failed was reported by TryWrite */ }
        if (_created && !_written)
        {
            try { File.Delete(Path); }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException) { }
        }
    }
}
