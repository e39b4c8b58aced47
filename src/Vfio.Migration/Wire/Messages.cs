namespace Vfio.Migration;

/// <summary>
/// A main-channel message: its type, the largest body it can have, and how it writes and reads its body
/// (docs/protocol.md section 2 has the layouts). Reading checks the whole body: a short or long body, a string or
/// count beyond its limit, bad UTF-8 or a flag that is not 0 or 1 is a ProtocolException.
/// </summary>
public interface IMessage<TSelf> where TSelf : struct, IMessage<TSelf>
{
    static abstract MessageType Type { get; }
    static abstract int MaxBodySize { get; }
    void Write(ref MessageWriter w);
    static abstract TSelf Read(ref MessageReader r);
}

/// <summary>Encodes and decodes message bodies.</summary>
public static class MessageCodec
{
    /// <summary>Writes the body of <paramref name="message"/> into <paramref name="body"/> (at least MaxBodySize bytes); its length.</summary>
    public static int Write<T>(in T message, Span<byte> body) where T : struct, IMessage<T>
    {
        var w = new MessageWriter(body[..T.MaxBodySize]);
        message.Write(ref w);
        return w.Length;
    }

    public static T Read<T>(ReadOnlySpan<byte> body) where T : struct, IMessage<T>
    {
        if (body.Length > T.MaxBodySize)
            throw new ProtocolException($"main channel: {T.Type} message of {body.Length} bytes (at most {T.MaxBodySize})");
        var r = new MessageReader(body, T.Type);
        var m = T.Read(ref r);
        r.End();
        return m;
    }

    /// <summary>The largest body of any message type.</summary>
    public static int LargestBody { get; } = Enum.GetValues<MessageType>().Max(MaxBodySize);

    /// <summary>The largest body a message of this type may have (0 for an unknown type).</summary>
    public static int MaxBodySize(MessageType type) => type switch
    {
        MessageType.DeviceList => DeviceListMessage.MaxBodySize,
        MessageType.Accept => AcceptMessage.MaxBodySize,
        MessageType.Switchover => SwitchoverMessage.MaxBodySize,
        MessageType.Credit => CreditMessage.MaxBodySize,
        MessageType.DeviceDone => DeviceDoneMessage.MaxBodySize,
        MessageType.DeviceResult => DeviceResultMessage.MaxBodySize,
        MessageType.Result => ResultMessage.MaxBodySize,
        MessageType.Error => ErrorMessage.MaxBodySize,
        MessageType.Heartbeat => HeartbeatMessage.MaxBodySize,
        MessageType.Commit => CommitMessage.MaxBodySize,
        MessageType.Running => RunningMessage.MaxBodySize,
        MessageType.PrecopyMark => PrecopyMarkMessage.MaxBodySize,
        MessageType.PrecopyAck => PrecopyAckMessage.MaxBodySize,
        _ => 0,
    };
}

/// <summary>One source device as the device list describes it.</summary>
public readonly record struct DeviceOffer(string Name, ulong ExpectedBytes, MigrationFlags Flags, DeviceIdentity Identity)
{
    /// <summary>A device that cannot tell its driver, kernel or firmware.</summary>
    public DeviceOffer(string name, ulong expectedBytes, MigrationFlags flags) : this(name, expectedBytes, flags, DeviceIdentity.Unknown) { }
}

/// <summary>
/// Source to destination, first: the buffer size and the devices to migrate, in pairing order; <paramref name="Precopy"/>:
/// the devices stay running while their precopy data goes first (docs/protocol.md section 2, "Live phase").
/// </summary>
public readonly record struct DeviceListMessage(int BufferSize, LoadingMode SourceLoading, DeviceOffer[] Devices, bool Precopy = false)
    : IMessage<DeviceListMessage>
{
    public static MessageType Type => MessageType.DeviceList;
    public static int MaxBodySize => 16 + Protocol.MaxDevices * (2 + Protocol.MaxNameBytes + 16 + 3 * (2 + Protocol.MaxIdentityBytes));

    public void Write(ref MessageWriter w)
    {
        w.U32((uint)BufferSize);
        w.U32((uint)Devices.Length);
        w.U32((uint)SourceLoading);
        foreach (var d in Devices)
        {
            w.Str(d.Name, Protocol.MaxNameBytes);
            w.U64(d.ExpectedBytes);
            w.U64((ulong)d.Flags);
            w.Str(d.Identity.Driver, Protocol.MaxIdentityBytes);
            w.Str(d.Identity.Kernel, Protocol.MaxIdentityBytes);
            w.Str(d.Identity.Firmware, Protocol.MaxIdentityBytes);
        }
        w.U32(Precopy ? 1u : 0u);
    }

    public static DeviceListMessage Read(ref MessageReader r)
    {
        uint buffer = r.U32();
        if (buffer < Protocol.MinBufferSize || buffer > Protocol.MaxBufferSize)
            throw r.Malformed($"has buffer size {buffer} ({Protocol.MinBufferSize}..{Protocol.MaxBufferSize})");
        int count = r.Below(Protocol.MaxDevices + 1, "device count");
        var loading = (LoadingMode)r.U32(); // informational: any value is accepted
        var devices = new DeviceOffer[count];
        for (int i = 0; i < count; i++)
        {
            string name = r.Str(Protocol.MaxNameBytes);
            ulong expected = r.U64();
            var flags = (MigrationFlags)r.U64();
            var identity = new DeviceIdentity(IdentityField(ref r, "driver"), IdentityField(ref r, "kernel"), IdentityField(ref r, "firmware"));
            devices[i] = new DeviceOffer(name, expected, flags, identity);
        }
        return new DeviceListMessage((int)buffer, loading, devices, r.Bool());
    }

    /// <summary>A version string goes into a one-line error or warning: control characters are refused.</summary>
    private static string IdentityField(ref MessageReader r, string what)
    {
        string s = r.Str(Protocol.MaxIdentityBytes);
        foreach (char c in s)
            if (char.IsControl(c)) throw r.Malformed($"has a control character in a device's {what}");
        return s;
    }
}

/// <summary>Destination to source: the credit window per device and the destination's device names.</summary>
public readonly record struct AcceptMessage(int Window, string[] DeviceNames) : IMessage<AcceptMessage>
{
    public static MessageType Type => MessageType.Accept;
    public static int MaxBodySize => 8 + Protocol.MaxDevices * (2 + Protocol.MaxNameBytes);

    public void Write(ref MessageWriter w)
    {
        w.U32((uint)Window);
        w.U32((uint)DeviceNames.Length);
        foreach (var n in DeviceNames) w.Str(n, Protocol.MaxNameBytes);
    }

    public static AcceptMessage Read(ref MessageReader r)
    {
        uint window = r.U32();
        if (window < Protocol.MinWindow || window > Protocol.MaxWindow)
            throw r.Malformed($"has window {window} ({Protocol.MinWindow}..{Protocol.MaxWindow})");
        int count = r.Below(Protocol.MaxDevices + 1, "device count");
        var names = new string[count];
        for (int i = 0; i < count; i++) names[i] = r.Str(Protocol.MaxNameBytes);
        return new AcceptMessage((int)window, names);
    }
}

/// <summary>Source to destination: the devices are stopped; the time the first left RUNNING (µs since the epoch, source clock).</summary>
public readonly record struct SwitchoverMessage(long FirstStopUs) : IMessage<SwitchoverMessage>
{
    public static MessageType Type => MessageType.Switchover;
    public static int MaxBodySize => 8;
    public void Write(ref MessageWriter w) => w.I64(FirstStopUs);
    public static SwitchoverMessage Read(ref MessageReader r) => new(r.I64());
}

/// <summary>Destination to source: buffers of a device loaded since its last Credit.</summary>
public readonly record struct CreditMessage(int Device, uint Credits) : IMessage<CreditMessage>
{
    public static MessageType Type => MessageType.Credit;
    public static int MaxBodySize => 8;

    public void Write(ref MessageWriter w)
    {
        w.U32((uint)Device);
        w.U32(Credits);
    }

    public static CreditMessage Read(ref MessageReader r) => new(r.Below(Protocol.MaxDevices, "device"), r.U32());
}

/// <summary>
/// Source to destination: a device's whole stream is queued; what the destination must find when it has loaded it, and
/// how much of it was read while the device ran (its first <paramref name="PrecopyBuffers"/> data buffers).
/// </summary>
public readonly record struct DeviceDoneMessage(int Device, uint DataBuffers, ulong Bytes, ulong Checksum, uint ConfigLength, ulong? Digest,
    uint PrecopyBuffers = 0, ulong PrecopyBytes = 0) : IMessage<DeviceDoneMessage>
{
    public static MessageType Type => MessageType.DeviceDone;
    public static int MaxBodySize => 52;

    public void Write(ref MessageWriter w)
    {
        w.U32((uint)Device);
        w.U32(DataBuffers);
        w.U64(Bytes);
        w.U64(Checksum);
        w.U32(ConfigLength);
        w.U32(Digest.HasValue ? 1u : 0u);
        w.U64(Digest ?? 0);
        w.U32(PrecopyBuffers);
        w.U64(PrecopyBytes);
    }

    public static DeviceDoneMessage Read(ref MessageReader r)
    {
        int device = r.Below(Protocol.MaxDevices, "device");
        uint buffers = r.U32();
        ulong bytes = r.U64(), checksum = r.U64();
        uint config = r.U32();
        bool hasDigest = r.Bool();
        ulong digest = r.U64();
        uint precopyBuffers = r.U32();
        ulong precopyBytes = r.U64();
        if (precopyBuffers > buffers || precopyBytes > bytes)
            throw r.Malformed($"says {precopyBuffers} of {buffers} buffers ({precopyBytes} of {bytes} bytes) were precopy");
        return new DeviceDoneMessage(device, buffers, bytes, checksum, config, hasDigest ? digest : null, precopyBuffers, precopyBytes);
    }
}

/// <summary>Destination to source: one device's outcome and load figures (µs).</summary>
public readonly record struct DeviceResultMessage(int Device, bool Verified, long Bytes, int Buffers, long WaitUs, long LoadUs, long ConfigUs,
    long StartUs, long EndUs, long MaxQueuedBytes, string? Error) : IMessage<DeviceResultMessage>
{
    public static MessageType Type => MessageType.DeviceResult;
    public static int MaxBodySize => 4 + 4 + 8 + 4 + 6 * 8 + 2 + Protocol.MaxTextBytes;

    public void Write(ref MessageWriter w)
    {
        w.U32((uint)Device);
        w.U32(Verified ? 1u : 0u);
        w.U64((ulong)Bytes);
        w.U32((uint)Buffers);
        w.I64(WaitUs); w.I64(LoadUs); w.I64(ConfigUs);
        w.I64(StartUs); w.I64(EndUs);
        w.I64(MaxQueuedBytes);
        w.Str(Error ?? "", Protocol.MaxTextBytes);
    }

    public static DeviceResultMessage Read(ref MessageReader r)
    {
        int device = r.Below(Protocol.MaxDevices, "device");
        bool verified = r.Bool();
        long bytes = (long)r.U64();
        int buffers = (int)r.U32();
        long wait = r.I64(), load = r.I64(), config = r.I64(), start = r.I64(), end = r.I64(), queued = r.I64();
        string error = r.Str(Protocol.MaxTextBytes);
        return new DeviceResultMessage(device, verified, bytes, buffers, wait, load, config, start, end, queued, error.Length == 0 ? null : error);
    }
}

/// <summary>
/// Destination to source, after the last DeviceResult: every device loaded and verified, in STOP (Ok), when the last
/// one finished loading (destination clock). Nothing runs at the destination before the source's Commit.
/// </summary>
public readonly record struct ResultMessage(bool Ok, long LoadEndUs, string? Message) : IMessage<ResultMessage>
{
    public static MessageType Type => MessageType.Result;
    public static int MaxBodySize => 4 + 8 + 2 + Protocol.MaxTextBytes;

    public void Write(ref MessageWriter w)
    {
        w.U32(Ok ? 1u : 0u);
        w.I64(LoadEndUs);
        w.Str(Message ?? "", Protocol.MaxTextBytes);
    }

    public static ResultMessage Read(ref MessageReader r)
    {
        bool ok = r.Bool();
        long loaded = r.I64();
        string message = r.Str(Protocol.MaxTextBytes);
        return new ResultMessage(ok, loaded, message.Length == 0 ? null : message);
    }
}

/// <summary>
/// Source to destination, after a Result that is Ok: the commit point. From the moment it sends this, the source never
/// resumes its devices by itself; the destination may now run its own.
/// </summary>
public readonly record struct CommitMessage : IMessage<CommitMessage>
{
    public static MessageType Type => MessageType.Commit;
    public static int MaxBodySize => 0;
    public void Write(ref MessageWriter w) { }
    public static CommitMessage Read(ref MessageReader r) => default;
}

/// <summary>
/// Source to destination, in a precopy run: the device's initial image is its first <paramref name="Buffers"/> data buffers.
/// The destination answers with <see cref="PrecopyAckMessage"/> once it has loaded them.
/// </summary>
public readonly record struct PrecopyMarkMessage(int Device, uint Buffers) : IMessage<PrecopyMarkMessage>
{
    public static MessageType Type => MessageType.PrecopyMark;
    public static int MaxBodySize => 8;

    public void Write(ref MessageWriter w)
    {
        w.U32((uint)Device);
        w.U32(Buffers);
    }

    public static PrecopyMarkMessage Read(ref MessageReader r) => new(r.Below(Protocol.MaxDevices, "device"), r.U32());
}

/// <summary>Destination to source: the switchover-ack, the device has loaded its whole initial image.</summary>
public readonly record struct PrecopyAckMessage(int Device) : IMessage<PrecopyAckMessage>
{
    public static MessageType Type => MessageType.PrecopyAck;
    public static int MaxBodySize => 4;
    public void Write(ref MessageWriter w) => w.U32((uint)Device);
    public static PrecopyAckMessage Read(ref MessageReader r) => new(r.Below(Protocol.MaxDevices, "device"));
}

/// <summary>Destination to source, last: every destination device runs; when the last reached RUNNING (destination clock).</summary>
public readonly record struct RunningMessage(long LastRunningUs) : IMessage<RunningMessage>
{
    public static MessageType Type => MessageType.Running;
    public static int MaxBodySize => 8;
    public void Write(ref MessageWriter w) => w.I64(LastRunningUs);
    public static RunningMessage Read(ref MessageReader r) => new(r.I64());
}

/// <summary>Either way: the sender aborts the run, and so does the receiver. Device 0xFFFFFFFF on the wire: not about one device.</summary>
public readonly record struct ErrorMessage(int? Device, string Message) : IMessage<ErrorMessage>
{
    private const uint NoDevice = uint.MaxValue;
    public static MessageType Type => MessageType.Error;
    public static int MaxBodySize => 4 + 2 + Protocol.MaxTextBytes;

    public void Write(ref MessageWriter w)
    {
        w.U32(Device is int d ? (uint)d : NoDevice);
        w.Str(Message, Protocol.MaxTextBytes);
    }

    public static ErrorMessage Read(ref MessageReader r)
    {
        uint device = r.U32();
        if (device != NoDevice && device >= Protocol.MaxDevices) throw r.Malformed($"has device {device}");
        return new ErrorMessage(device == NoDevice ? null : (int)device, r.Str(Protocol.MaxTextBytes));
    }
}

/// <summary>Either way, every second while idle: the sender is alive.</summary>
public readonly record struct HeartbeatMessage : IMessage<HeartbeatMessage>
{
    public static MessageType Type => MessageType.Heartbeat;
    public static int MaxBodySize => 0;
    public void Write(ref MessageWriter w) { }
    public static HeartbeatMessage Read(ref MessageReader r) => default;
}
