using Microsoft.Extensions.Logging;

namespace Vfio.Tests.Migration;

/// <summary>Keeps every line logged (from any thread).</summary>
internal sealed class CapturingLogger : ILogger
{
    private readonly List<(LogLevel, string)> _lines = [];

    public IReadOnlyList<(LogLevel Level, string Text)> Lines { get { lock (_lines) return _lines.ToArray(); } }

    public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;
    public bool IsEnabled(LogLevel logLevel) => true;

    public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
    {
        lock (_lines) _lines.Add((logLevel, formatter(state, exception)));
    }
}
