namespace Vfio.Migration;

public enum LoadingMode
{
    /// <summary>One loading thread per device; receive threads only queue buffers (QEMU's design).</summary>
    Decoupled,
    /// <summary>
    /// Receive threads load the buffers they complete themselves (the alternative QEMU's multifd loading-thread design was
    /// measured against), under the same credits.
    /// </summary>
    Coupled,
}

/// <summary>Whether the devices run while their state goes first (PRE_COPY), before the switchover.</summary>
public enum PrecopyMode
{
    /// <summary>Live when every device offers PRE_COPY, else stop-copy only.</summary>
    Auto,
    /// <summary>Live; a device without PRE_COPY is an error before any device is touched.</summary>
    On,
    /// <summary>Stop-copy only.</summary>
    Off,
}

/// <summary>What the source does when precopy has not converged within its timeout.</summary>
public enum PrecopyTimeoutAction
{
    /// <summary>Switch over anyway (a longer downtime), with a warning.</summary>
    Switchover,
    /// <summary>Give up: the devices back to RUNNING, nothing lost.</summary>
    Abort,
}

public sealed record MigrationOptions
{
    public const int DefaultBufferSize = 1 << 20;
    /// <summary>
    /// 4: the credit round trip needs well under one buffer per device, and a device's write returns its credit as
    /// soon as the bytes are in (a record larger than the window still loads). A larger window only makes every
    /// device read further ahead when the devices stop, which on a host with few cores delays each device's first
    /// buffers (docs/performance.md has the side-by-side figures).
    /// </summary>
    public const int DefaultWindow = 4;

    /// <summary>Data channels (TCP connections besides the main channel).</summary>
    public int Channels { get; init; } = 6;
    /// <summary>Bytes per data buffer the source reads from a device (the packet payload).</summary>
    public int BufferSize { get; init; } = DefaultBufferSize;
    public LoadingMode Loading { get; init; } = LoadingMode.Decoupled;
    /// <summary>Buffers per device the destination lets the source have in flight (received or on the wire, not yet loaded).</summary>
    public int Window { get; init; } = DefaultWindow;
    /// <summary>How long a peer may stay silent (heartbeats every second on the main channel) or refuse to read.</summary>
    public TimeSpan Timeout { get; init; } = TimeSpan.FromSeconds(30);
    /// <summary>
    /// How long one call into a device may take (a write(2) that loads a record, RESUMING->STOP) before the run fails:
    /// separate from <see cref="Timeout"/>, since a device may legitimately load for longer than a peer may be silent.
    /// </summary>
    public TimeSpan LoadTimeout { get; init; } = TimeSpan.FromSeconds(60);
    /// <summary>Off by default until the guest tier covers live runs with dirtying devices (see README, "Live migration").</summary>
    public PrecopyMode Precopy { get; init; } = PrecopyMode.Off;
    /// <summary>Switch over once the remainder is estimated to move and load within this (QEMU's downtime-limit default).</summary>
    public TimeSpan DowntimeLimit { get; init; } = TimeSpan.FromMilliseconds(300);
    /// <summary>How long precopy may take to converge before <see cref="PrecopyTimeoutAction"/>.</summary>
    public TimeSpan PrecopyTimeout { get; init; } = TimeSpan.FromSeconds(60);
    public PrecopyTimeoutAction PrecopyTimeoutAction { get; init; } = PrecopyTimeoutAction.Switchover;
    /// <summary>Mutual TLS 1.3 on every connection; null: plaintext.</summary>
    public TlsSettings? Tls { get; init; }
    /// <summary>How long `receive` waits for a source to connect.</summary>
    public TimeSpan AcceptTimeout { get; init; } = TimeSpan.FromMinutes(10);
    /// <summary>How the source distributes packets over channels (default: the next idle channel); tests script it.</summary>
    internal Func<int, IPacketScheduler>? SchedulerFactory { get; init; }
    /// <summary>What the source's sender of data channel N (1..) writes through (default: the connection); tests wrap it.</summary>
    internal Func<int, IDataChannelWriter, IDataChannelWriter>? DataChannelWriter { get; init; }

    public void Validate()
    {
        if (Channels < 1 || Channels > Protocol.MaxChannels)
            throw new ArgumentException($"--channels must be between 1 and {Protocol.MaxChannels}");
        if (BufferSize < Protocol.MinBufferSize || BufferSize > Protocol.MaxBufferSize)
            throw new ArgumentException($"--buffer-size must be between {Protocol.MinBufferSize} and {Protocol.MaxBufferSize} bytes");
        if (Window < 2 || Window > Protocol.MaxWindow)
            throw new ArgumentException("--window must be between 2 and 4096 buffers");
        if (Timeout <= TimeSpan.Zero)
            throw new ArgumentException("--timeout must be positive");
        if (LoadTimeout <= TimeSpan.Zero)
            throw new ArgumentException("--load-timeout must be positive");
        if (DowntimeLimit <= TimeSpan.Zero)
            throw new ArgumentException("--downtime-limit must be positive");
        if (PrecopyTimeout <= TimeSpan.Zero)
            throw new ArgumentException("--precopy-timeout must be positive");
    }
}
